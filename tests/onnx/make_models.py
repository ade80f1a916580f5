#!/usr/bin/env python3
"""Writes two tiny ONNX models with the signatures of InsightFace buffalo_l's det_10g.onnx and
w600k_r50.onnx, whose outputs are simple functions of the input, so that tests/onnx_face.rs can
predict exactly what the onnx face backend must decode (the real weights cannot be had here).

Usage: make_models.py OUT_DIR    (writes OUT_DIR/det_10g_test.onnx and OUT_DIR/w600k_r50_test.onnx)

Detector (input "input.1", float 1x3xHxW with H, W dynamic, as det_10g; nine outputs in det_10g's
order and names: scores [N,1], boxes [N,4], keypoints [N,10] for strides 8, 16, 32, N = H/s*W/s*2):
  - score of both anchors of a stride-32 cell = sigmoid(20 * (mean of input channel 0 over the cell
    - 0.5)): a cell filled with full red (R = 255 -> (255-127.5)/128) scores 0.99995, a cell with
    R = 0 scores ~0. Channel 0 only, so the test also proves the backend feeds RGB, not BGR.
    Strides 8 and 16 always score sigmoid(-20) ~ 2e-9.
  - every anchor's box distances are BOX (in stride units) and keypoint offsets KPS.
Recogniser (input "input.1", float Nx3x112x112; output "683" [N,512]):
  - embedding = (mean of channel 1, mean of channel 2, 0, ..., 0) over the crop: the identity of a
    face is its G and B colour, and the cosine of two faces is the cosine of those 2-vectors.
"""

import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# Shared with tests/onnx_face.rs: keep them in step.
BOX = [1.0, 1.5, 2.0, 2.5]  # left, top, right, bottom distances, stride units
KPS = [0.0, 0.0, 1.0, 0.0, 0.5, 0.6, 0.1, 1.1, 0.9, 1.1]  # eyes, nose, mouth corners, stride units
OPSET = 13
IR_VERSION = 8  # readable by every onnxruntime from 1.10 on


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def detector():
    nodes, inits = [], [
        const("half", np.array(0.5, np.float32)),
        const("gain", np.array(20.0, np.float32)),
        const("zero", np.array(0.0, np.float32)),
        const("off", np.array(-20.0, np.float32)),
        const("col", np.array([-1, 1], np.int64)),
        const("box", np.array([BOX], np.float32)),
        const("kps", np.array([KPS], np.float32)),
        const("c0", np.array([0], np.int64)),
        const("c1", np.array([1], np.int64)),
        const("ax1", np.array([1], np.int64)),
    ]
    names = {8: ("448", "451", "454"), 16: ("471", "474", "477"), 32: ("494", "497", "500")}
    outputs = {}
    for s in (8, 16, 32):
        p = f"s{s}_"
        nodes.append(helper.make_node("AveragePool", ["input.1"], [p + "pool"], kernel_shape=[s, s], strides=[s, s]))
        nodes.append(helper.make_node("Slice", [p + "pool", "c0", "c1", "ax1"], [p + "red"]))
        if s == 32:
            nodes.append(helper.make_node("Sub", [p + "red", "half"], [p + "centred"]))
            nodes.append(helper.make_node("Mul", [p + "centred", "gain"], [p + "logit"]))
        else:
            nodes.append(helper.make_node("Mul", [p + "red", "zero"], [p + "nil"]))
            nodes.append(helper.make_node("Add", [p + "nil", "off"], [p + "logit"]))
        nodes.append(helper.make_node("Sigmoid", [p + "logit"], [p + "prob"]))
        # [1,1,h,w] -> [h*w, 1] row-major, then each cell twice (2 anchors) -> [N, 1].
        nodes.append(helper.make_node("Transpose", [p + "prob"], [p + "hw1"], perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node("Reshape", [p + "hw1", "col"], [p + "cells"]))
        nodes.append(helper.make_node("Concat", [p + "cells", p + "cells"], [p + "pairs"], axis=1))
        score, bbox, kps = names[s]
        nodes.append(helper.make_node("Reshape", [p + "pairs", "col"], [score]))
        nodes.append(helper.make_node("Mul", [score, "zero"], [p + "zeros"]))
        nodes.append(helper.make_node("Add", [p + "zeros", "box"], [bbox]))
        nodes.append(helper.make_node("Add", [p + "zeros", "kps"], [kps]))
        outputs[s] = (score, bbox, kps)
    order = [outputs[s][0] for s in (8, 16, 32)] + [outputs[s][1] for s in (8, 16, 32)] + [outputs[s][2] for s in (8, 16, 32)]
    width = {0: 1, 1: 4, 2: 10}
    outs = [
        helper.make_tensor_value_info(name, TensorProto.FLOAT, [f"n{i % 3}", width[i // 3]]) for i, name in enumerate(order)
    ]
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, [1, 3, "?", "?"])
    graph = helper.make_graph(nodes, "scrfd_test", [inp], outs, inits)
    return model(graph)


def recogniser():
    w = np.zeros((3, 512), np.float32)
    w[1, 0] = 1.0  # G -> embedding[0]
    w[2, 1] = 1.0  # B -> embedding[1]
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["means"], axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["means", "w"], ["683"]),
    ]
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])
    out = helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])
    graph = helper.make_graph(nodes, "arcface_test", [inp], [out], [const("w", w)])
    return model(graph)


def model(graph):
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="talkheadd-tests")
    m.ir_version = IR_VERSION
    onnx.checker.check_model(m, full_check=True)
    return m


def main():
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    onnx.save(detector(), out / "det_10g_test.onnx")
    onnx.save(recogniser(), out / "w600k_r50_test.onnx")


if __name__ == "__main__":
    main()
