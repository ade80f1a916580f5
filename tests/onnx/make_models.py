#!/usr/bin/env python3
"""Writes two tiny ONNX models with the signatures of InsightFace buffalo_l's det_10g.onnx and
w600k_r50.onnx, whose outputs are simple functions of the input, so that tests/onnx_face.rs can
predict exactly what the onnx face backend must decode (the real weights cannot be had here), and
tests/insightface_parity.rs can run the same files through the `insightface` package itself.

Usage: make_models.py OUT_DIR    (writes OUT_DIR/det_10g_test.onnx and OUT_DIR/w600k_r50_test.onnx)

Both are deterministic (fixed seed): the same bytes on every run.

Detector (input "input.1", float 1x3xHxW with H, W dynamic, as det_10g; nine outputs in det_10g's
order and names: scores [N,1], boxes [N,4], keypoints [N,10] for strides 8, 16, 32, N = H/s*W/s*2;
both anchors of a cell get the same values). For each stride s, a "texture" convolution (kernel s x s,
stride s, 15 output channels over the three input planes) with smooth, zero-sum kernels (low-frequency
cosines, antisymmetric in x or y): it is 0 on a cell of uniform colour and varies linearly with the
picture inside a cell otherwise. With t = that convolution:
  - stride 32: score = sigmoid(20 * (mean of input channel 0 over the cell - 0.5) + 3 * t0): a
    uniform cell full of red (R = 255 -> (255-127.5)/128) scores 0.99995, a cell with R = 0 scores ~0.
    Channel 0 only on uniform cells, so the tests also prove the backend feeds RGB, not BGR.
  - stride 16: score = sigmoid(-20 + 45 * t0), t0 read from the R plane only: ~2e-9 on cells of
    uniform red, a face where a cell has strong structure in red; stride 8 always scores
    sigmoid(-20) ~ 2e-9.
  - box distances = BOX + 0.8 * tanh(t1..t4), keypoint offsets = KPS + 0.5 * tanh(t5..t14), in stride
    units: exactly BOX and KPS on uniform cells (what tests/onnx_face.rs checks), boxes and landmarks
    that follow the picture on photographs (what the parity test needs: different sizes, tilted and
    scaled landmarks, so alignment does more than translate).
Recogniser (input "input.1", float Nx3x112x112; output "683" [N,512]):
  - embedding[0:2] = (mean of channel 1, mean of channel 2) over the crop: the identity of a uniform
    face is its G and B colour, and the cosine of two such faces is the cosine of those 2-vectors;
  - embedding[2:512] = a fixed zero-sum linear map of the crop's G and B planes averaged over 8x8
    blocks: 0 on crops whose G and B are uniform, a 510-d signature of any real crop.
  Node names follow a PyTorch export as w600k_r50's do: none starts with "Sub"/"_minus" and "Mul"/"_mul"
  among the first 8, so insightface's ArcFaceONNX infers input_mean = input_std = 127.5 from it, as it
  does for w600k_r50 (which it prints as "recognition ['None', 3, 112, 112] 127.5 127.5").
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
SEED = 17
TEXTURE = 15  # texture channels: score, 4 box distances, 10 keypoint offsets
# Per stride: (gain of t0 in the score logit, whether channel 0's mean enters the logit).
SCORE = {8: (0.0, False), 16: (45.0, False), 32: (3.0, True)}


def const(name, array):
    return numpy_helper.from_array(np.asarray(array), name)


def zero_sum_kernels(rng, out_ch, in_ch, side):
    """[out_ch, in_ch, side, side] float32 kernels, each a random mix of low-frequency cosines that are
    antisymmetric in x or in y (so each sums to zero over a cell), scaled to sum(|w|) = 1."""
    pos = (np.arange(side) + 0.5) / side
    w = np.zeros((out_ch, in_ch, side, side), np.float64)
    for o in range(out_ch):
        for i in range(in_ch):
            k = np.zeros((side, side))
            for fy in range(4):
                for fx in range(4):
                    if fx % 2 == 0 and fy % 2 == 0:
                        continue  # symmetric in both: would not sum to zero
                    k += rng.normal() * np.outer(np.cos(np.pi * fy * pos), np.cos(np.pi * fx * pos))
            w[o, i] = k / np.abs(k).sum()
    return w.astype(np.float32)


def detector():
    rng = np.random.default_rng(SEED)
    nodes, inits = [], [
        const("half", np.array(0.5, np.float32)),
        const("gain", np.array(20.0, np.float32)),
        const("zero", np.array(0.0, np.float32)),
        const("off", np.array(-20.0, np.float32)),
        const("col", np.array([-1, 1], np.int64)),
        const("box", np.array([BOX], np.float32)),
        const("kps", np.array([KPS], np.float32)),
        const("box_amp", np.array(0.8, np.float32)),
        const("kps_amp", np.array(0.5, np.float32)),
        const("c0", np.array([0], np.int64)),
        const("c1", np.array([1], np.int64)),
        const("c5", np.array([5], np.int64)),
        const("c15", np.array([TEXTURE], np.int64)),
        const("ax1", np.array([1], np.int64)),
        const("rows_tex", np.array([-1, TEXTURE], np.int64)),
        const("rows4", np.array([-1, 4], np.int64)),
        const("rows10", np.array([-1, 10], np.int64)),
    ]
    names = {8: ("448", "451", "454"), 16: ("471", "474", "477"), 32: ("494", "497", "500")}
    outputs = {}
    for s in (8, 16, 32):
        p = f"s{s}_"
        tex_gain, reads_red = SCORE[s]
        kernels = zero_sum_kernels(rng, TEXTURE, 3, s)
        if s == 16:
            # The stride-16 score reads structure in the R plane only: the black border of the pad
            # retry around a face-less frame of another colour must not make faces.
            kernels[0, 1:] = 0.0
        inits.append(const(p + "w", kernels))
        inits.append(const(p + "tex_gain", np.array(tex_gain, np.float32)))
        # Texture per cell, [1, 15, h, w] -> [h*w, 15] row-major.
        nodes.append(helper.make_node("Conv", ["input.1", p + "w"], [p + "conv"], kernel_shape=[s, s], strides=[s, s]))
        nodes.append(helper.make_node("Transpose", [p + "conv"], [p + "hwc"], perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node("Reshape", [p + "hwc", "rows_tex"], [p + "tex"]))
        nodes.append(helper.make_node("Slice", [p + "tex", "c0", "c1", "ax1"], [p + "t0"]))
        nodes.append(helper.make_node("Slice", [p + "tex", "c1", "c5", "ax1"], [p + "tbox"]))
        nodes.append(helper.make_node("Slice", [p + "tex", "c5", "c15", "ax1"], [p + "tkps"]))
        # Base logit per cell, [h*w, 1].
        nodes.append(helper.make_node("AveragePool", ["input.1"], [p + "pool"], kernel_shape=[s, s], strides=[s, s]))
        nodes.append(helper.make_node("Slice", [p + "pool", "c0", "c1", "ax1"], [p + "red"]))
        if reads_red:
            nodes.append(helper.make_node("Sub", [p + "red", "half"], [p + "centred"]))
            nodes.append(helper.make_node("Mul", [p + "centred", "gain"], [p + "base"]))
        else:
            nodes.append(helper.make_node("Mul", [p + "red", "zero"], [p + "nil"]))
            nodes.append(helper.make_node("Add", [p + "nil", "off"], [p + "base"]))
        nodes.append(helper.make_node("Transpose", [p + "base"], [p + "base_hw1"], perm=[0, 2, 3, 1]))
        nodes.append(helper.make_node("Reshape", [p + "base_hw1", "col"], [p + "base_cells"]))
        nodes.append(helper.make_node("Mul", [p + "t0", p + "tex_gain"], [p + "t0g"]))
        nodes.append(helper.make_node("Add", [p + "base_cells", p + "t0g"], [p + "logit"]))
        nodes.append(helper.make_node("Sigmoid", [p + "logit"], [p + "cells"]))
        # Box distances and keypoint offsets per cell.
        nodes.append(helper.make_node("Tanh", [p + "tbox"], [p + "tbox_t"]))
        nodes.append(helper.make_node("Mul", [p + "tbox_t", "box_amp"], [p + "dbox"]))
        nodes.append(helper.make_node("Add", [p + "dbox", "box"], [p + "box_cells"]))
        nodes.append(helper.make_node("Tanh", [p + "tkps"], [p + "tkps_t"]))
        nodes.append(helper.make_node("Mul", [p + "tkps_t", "kps_amp"], [p + "dkps"]))
        nodes.append(helper.make_node("Add", [p + "dkps", "kps"], [p + "kps_cells"]))
        # Each cell twice (2 anchors): [h*w, k] -> [h*w, 2k] -> [2*h*w, k].
        score, bbox, kps = names[s]
        for src, dst, rows in ((p + "cells", score, "col"), (p + "box_cells", bbox, "rows4"), (p + "kps_cells", kps, "rows10")):
            nodes.append(helper.make_node("Concat", [src, src], [dst + "_pairs"], axis=1))
            nodes.append(helper.make_node("Reshape", [dst + "_pairs", rows], [dst]))
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
    rng = np.random.default_rng(SEED + 1)
    w = np.zeros((3, 512), np.float32)
    w[1, 0] = 1.0  # G -> embedding[0]
    w[2, 1] = 1.0  # B -> embedding[1]
    # The texture map: 2 planes x 14 x 14 blocks -> 510 columns, each zero-sum within each plane.
    t = rng.normal(size=(2, 196, 510))
    t -= t.mean(axis=1, keepdims=True)
    t /= np.abs(t).sum(axis=(0, 1), keepdims=True) / 4.0
    tex = np.zeros((392, 512), np.float32)
    tex[:, 2:] = t.reshape(392, 510)
    nodes = [
        helper.make_node("ReduceMean", ["input.1"], ["means"], name="ReduceMean_0", axes=[2, 3], keepdims=0),
        helper.make_node("MatMul", ["means", "w"], ["base"], name="MatMul_1"),
        helper.make_node("AveragePool", ["input.1"], ["blocks"], name="AveragePool_2", kernel_shape=[8, 8], strides=[8, 8]),
        helper.make_node("Slice", ["blocks", "c1", "c3", "ax1"], ["gb"], name="Slice_3"),
        helper.make_node("Flatten", ["gb"], ["flat"], name="Flatten_4", axis=1),
        helper.make_node("MatMul", ["flat", "tex"], ["signature"], name="MatMul_5"),
        helper.make_node("Add", ["base", "signature"], ["683"], name="Add_6"),
    ]
    # What insightface's ArcFaceONNX looks for to decide the input normalisation (see the docstring).
    first = [n.name for n in nodes[:8]]
    assert not (any(n.startswith(("Sub", "_minus")) for n in first) and any(n.startswith(("Mul", "_mul")) for n in first))
    inits = [
        const("w", w),
        const("tex", tex),
        const("c1", np.array([1], np.int64)),
        const("c3", np.array([3], np.int64)),
        const("ax1", np.array([1], np.int64)),
    ]
    inp = helper.make_tensor_value_info("input.1", TensorProto.FLOAT, ["None", 3, 112, 112])
    out = helper.make_tensor_value_info("683", TensorProto.FLOAT, ["None", 512])
    graph = helper.make_graph(nodes, "arcface_test", [inp], [out], inits)
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
