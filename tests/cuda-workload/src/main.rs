//! A known CUDA workload for talkheadd's `gpu_*` tests, through the CUDA driver API loaded at run time
//! (`libcuda.so.1`, from the driver on the host or injected by the NVIDIA Container Toolkit), so it
//! needs no CUDA toolkit to build and builds on hosts without a GPU.
//!
//! - `talkhead-cuda-workload alloc <MiB> <hold_ms>`: allocates and fills `MiB` of device memory on
//!   device 0, prints `allocated <MiB> MiB pid <pid>`, holds it `hold_ms`, frees it, prints `freed`,
//!   then waits for stdin to close before exiting (so the process, and its NVML accounting record,
//!   outlive the allocation while the test reads the meter).
//! - `talkhead-cuda-workload devices`: prints `devices <n>` and one `device <i> GPU-<uuid>` line each.
//!
//! Exit codes: 0 done, 2 usage, 3 CUDA unavailable or failed (the message names the call).

// The driver API is C: calling it needs `unsafe`, confined to `Cuda`'s methods.
#![allow(unsafe_code)]

use libloading::{Library, Symbol};
use std::ffi::{c_int, c_uint, c_void};
use std::io::Read;
use std::time::Duration;

type CuResult = c_int;
type CuDevice = c_int;
type CuContext = *mut c_void;
type CuDevicePtr = u64;

/// Where `libcuda.so.1` may be: the loader's search path first, then where the toolkit mounts it
/// (a FROM-scratch image has no loader cache naming it).
const LIBCUDA: &[&str] = &[
    "libcuda.so.1",
    "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
    "/usr/lib64/libcuda.so.1",
    "/usr/lib/libcuda.so.1",
];

struct Cuda {
    lib: Library,
}

fn fail(what: &str, code: CuResult) -> String {
    format!("{what} failed with CUresult {code}")
}

impl Cuda {
    fn load() -> Result<Cuda, String> {
        let mut errors = Vec::new();
        for name in LIBCUDA {
            // SAFETY: loading the NVIDIA driver library runs its initialisers, which have no
            // preconditions on this process.
            match unsafe { Library::new(name) } {
                Ok(lib) => return Ok(Cuda { lib }),
                Err(e) => errors.push(format!("{name}: {e}")),
            }
        }
        Err(format!("cannot load libcuda.so.1 ({})", errors.join("; ")))
    }

    fn symbol<T>(&self, name: &[u8]) -> Result<Symbol<'_, T>, String> {
        // SAFETY: every caller names a driver API entry point with the C signature `T` it declares,
        // as documented in cuda.h (the `_v2` names are the current ABI of the 64-bit API).
        unsafe { self.lib.get(name) }.map_err(|e| format!("{}: {e}", String::from_utf8_lossy(name)))
    }

    fn call(&self, name: &str, code: CuResult) -> Result<(), String> {
        if code == 0 { Ok(()) } else { Err(fail(name, code)) }
    }

    fn init(&self) -> Result<(), String> {
        let f = self.symbol::<unsafe extern "C" fn(c_uint) -> CuResult>(b"cuInit\0")?;
        // SAFETY: cuInit takes flags that must be 0.
        self.call("cuInit", unsafe { f(0) })
    }

    fn device_count(&self) -> Result<c_int, String> {
        let f = self.symbol::<unsafe extern "C" fn(*mut c_int) -> CuResult>(b"cuDeviceGetCount\0")?;
        let mut n = 0;
        // SAFETY: the out-pointer is a valid, writable c_int.
        self.call("cuDeviceGetCount", unsafe { f(&mut n) })?;
        Ok(n)
    }

    fn device(&self, ordinal: c_int) -> Result<CuDevice, String> {
        let f = self.symbol::<unsafe extern "C" fn(*mut CuDevice, c_int) -> CuResult>(b"cuDeviceGet\0")?;
        let mut d = 0;
        // SAFETY: the out-pointer is valid; an out-of-range ordinal is an error code, not UB.
        self.call("cuDeviceGet", unsafe { f(&mut d, ordinal) })?;
        Ok(d)
    }

    /// `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`, as NVML and `NVIDIA_VISIBLE_DEVICES` spell it.
    fn uuid(&self, device: CuDevice) -> Result<String, String> {
        let f =
            self.symbol::<unsafe extern "C" fn(*mut [u8; 16], CuDevice) -> CuResult>(b"cuDeviceGetUuid\0")?;
        let mut b = [0u8; 16];
        // SAFETY: CUuuid is 16 bytes; the out-pointer is valid for them.
        self.call("cuDeviceGetUuid", unsafe { f(&mut b, device) })?;
        let hex: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
        let h = hex.concat();
        Ok(format!(
            "GPU-{}-{}-{}-{}-{}",
            &h[..8],
            &h[8..12],
            &h[12..16],
            &h[16..20],
            &h[20..]
        ))
    }

    fn context(&self, device: CuDevice) -> Result<CuContext, String> {
        let f = self.symbol::<unsafe extern "C" fn(*mut CuContext, c_uint, CuDevice) -> CuResult>(
            b"cuCtxCreate_v2\0",
        )?;
        let mut ctx = std::ptr::null_mut();
        // SAFETY: the out-pointer is valid; flags 0 = default scheduling.
        self.call("cuCtxCreate", unsafe { f(&mut ctx, 0, device) })?;
        Ok(ctx)
    }

    fn alloc_filled(&self, bytes: usize) -> Result<CuDevicePtr, String> {
        let alloc =
            self.symbol::<unsafe extern "C" fn(*mut CuDevicePtr, usize) -> CuResult>(b"cuMemAlloc_v2\0")?;
        let set =
            self.symbol::<unsafe extern "C" fn(CuDevicePtr, u8, usize) -> CuResult>(b"cuMemsetD8_v2\0")?;
        let sync = self.symbol::<unsafe extern "C" fn() -> CuResult>(b"cuCtxSynchronize\0")?;
        let mut ptr = 0;
        // SAFETY: a context is current (created by `context`); the out-pointer is valid.
        self.call("cuMemAlloc", unsafe { alloc(&mut ptr, bytes) })?;
        // Touch every byte so the memory is really committed, not just reserved.
        // SAFETY: `ptr` is a live allocation of `bytes` bytes in the current context.
        self.call("cuMemsetD8", unsafe { set(ptr, 0xa5, bytes) })?;
        // SAFETY: no arguments; waits for the memset.
        self.call("cuCtxSynchronize", unsafe { sync() })?;
        Ok(ptr)
    }

    fn free(&self, ptr: CuDevicePtr) -> Result<(), String> {
        let f = self.symbol::<unsafe extern "C" fn(CuDevicePtr) -> CuResult>(b"cuMemFree_v2\0")?;
        // SAFETY: `ptr` came from cuMemAlloc in the current context and is freed once.
        self.call("cuMemFree", unsafe { f(ptr) })
    }
}

fn alloc(mib: usize, hold: Duration) -> Result<(), String> {
    let cuda = Cuda::load()?;
    cuda.init()?;
    let device = cuda.device(0)?;
    let _ctx = cuda.context(device)?;
    let ptr = cuda.alloc_filled(mib << 20)?;
    println!("allocated {mib} MiB pid {}", std::process::id());
    std::thread::sleep(hold);
    cuda.free(ptr)?;
    println!("freed");
    // Outlive the allocation until the test is done reading (stdin closed or the process killed).
    let _ = std::io::stdin().read_to_end(&mut Vec::new());
    Ok(())
}

fn devices() -> Result<(), String> {
    let cuda = Cuda::load()?;
    cuda.init()?;
    let n = cuda.device_count()?;
    println!("devices {n}");
    for i in 0..n {
        println!("device {i} {}", cuda.uuid(cuda.device(i)?)?);
    }
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let result = match args.as_slice() {
        ["alloc", mib, hold_ms] => match (mib.parse(), hold_ms.parse()) {
            (Ok(mib), Ok(ms)) => alloc(mib, Duration::from_millis(ms)),
            _ => usage(),
        },
        ["devices"] => devices(),
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("talkhead-cuda-workload: {e}");
        std::process::exit(3);
    }
}

fn usage() -> Result<(), String> {
    eprintln!("usage: talkhead-cuda-workload alloc <MiB> <hold_ms> | devices");
    std::process::exit(2);
}
