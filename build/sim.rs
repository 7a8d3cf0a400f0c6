//! The CUDA simulator's build (docs/ARCHITECTURE.md, "CUDA without a GPU"): every kernels/*.cu
//! compiled a second time as host C++ (g++ with sim/shim.h force-included), registered under its
//! module and entry-point names with the hash of the fatbin nvcc made from the same source, and
//! linked with the runtime and the driver stand-in into `libcuda.so`; the cuBLAS stand-in becomes
//! `libcublas.so`. Both are embedded in the crate (`$OUT_DIR/sim.rs`) and loaded instead of the
//! real libraries when BITUNE_CUDA_SIM=1.

use std::path::{Path, PathBuf};
use std::process::Command;

/// An `extern "C" __global__` entry point and its `__launch_bounds__` thread limit (a C++
/// expression evaluated in the registration unit, where the kernel's macros are in scope).
struct Entry {
    name: String,
    max_threads: Option<String>,
}

/// Finds `__global__ void [__launch_bounds__(…)] name(` in a kernel source.
fn entries(src: &str) -> Vec<Entry> {
    let mut out = vec![];
    let mut rest = src;
    while let Some(at) = rest.find("__global__") {
        rest = &rest[at + "__global__".len()..];
        let mut s = rest.trim_start();
        let Some(after_void) = s.strip_prefix("void") else {
            continue;
        };
        s = after_void.trim_start();
        let mut max_threads = None;
        if let Some(lb) = s.strip_prefix("__launch_bounds__") {
            let lb = lb.trim_start();
            let (inner, tail) = balanced(lb);
            let first = split_top_comma(inner);
            max_threads = Some(first.trim().to_string());
            s = tail.trim_start();
        }
        let name: String = s
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        if !name.is_empty() {
            out.push(Entry { name, max_threads });
        }
    }
    out
}

/// `(...)rest` → (the text inside the outer parentheses, rest).
fn balanced(s: &str) -> (&str, &str) {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => {
                depth -= 1;
                if depth == 0 {
                    return (&s[1..i], &s[i + 1..]);
                }
            }
            _ => {}
        }
    }
    (s, "")
}

/// The first argument of a comma-separated list, commas inside parentheses kept.
fn split_top_comma(s: &str) -> &str {
    let mut depth = 0;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth -= 1,
            ',' if depth == 0 => return &s[..i],
            _ => {}
        }
    }
    s
}

/// FNV-1a 64, as sim/registry.cpp computes it over the image cuModuleLoadData receives.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf29ce484222325u64, |h, &b| {
        (h ^ b as u64).wrapping_mul(0x100000001b3)
    })
}

fn cxx() -> String {
    std::env::var("CXX").unwrap_or_else(|_| "c++".into())
}

const FLAGS: &[&str] = &[
    "-std=c++17",
    "-O2",
    "-g1",
    "-fPIC",
    "-fno-omit-frame-pointer",
    "-Wall",
    "-Wextra",
    "-Werror",
];

/// Compiles the listed units, all at once (each is one small single-threaded g++), into `dir`.
fn compile(units: &[(PathBuf, Vec<String>)], dir: &Path) -> Vec<PathBuf> {
    let mut objs = vec![];
    let mut pending = vec![];
    for (src, extra) in units {
        let obj = dir.join(format!("{}.o", src.file_stem().unwrap().to_string_lossy()));
        let child = Command::new(cxx())
            .args(FLAGS)
            .args(extra)
            .arg("-c")
            .arg(src)
            .arg("-o")
            .arg(&obj)
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| super::fail(&format!("running {}: {e}", cxx())));
        pending.push((src.clone(), child));
        objs.push(obj);
    }
    for (src, child) in pending {
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            super::fail(&format!(
                "compiling {} for the CUDA simulator:\n{}",
                src.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    objs
}

fn link(objs: &[PathBuf], soname: &str, out: &Path, extra: &[&str]) {
    let res = Command::new(cxx())
        .args(["-shared", "-fPIC"])
        .arg(format!("-Wl,-soname,{soname}"))
        .args(objs)
        .args(extra)
        .args(["-lpthread", "-o"])
        .arg(out)
        .output()
        .unwrap_or_else(|e| super::fail(&format!("running {}: {e}", cxx())));
    if !res.status.success() {
        super::fail(&format!(
            "linking {soname} for the CUDA simulator:\n{}",
            String::from_utf8_lossy(&res.stderr)
        ));
    }
}

/// `modules`: (stem, kernel source, fatbin nvcc made from it).
pub fn build(root: &Path, out: &Path, modules: &[(String, PathBuf, PathBuf)]) {
    let sim = root.join("sim");
    println!("cargo:rerun-if-changed={}", sim.display());
    println!("cargo:rerun-if-env-changed=CXX");
    let dir = out.join("sim");
    std::fs::create_dir_all(&dir).unwrap();
    let include = format!("-I{}", sim.display());
    // Host versions of CUDA headers the kernels include (cuda_bf16.h, cuda_fp16.h).
    let host_headers = format!("-I{}", sim.join("include").display());
    let shim = sim.join("shim.h");

    let mut units: Vec<(PathBuf, Vec<String>)> = vec![];
    for (stem, src, fatbin) in modules {
        let text = std::fs::read_to_string(src).unwrap();
        let image = std::fs::read(fatbin).unwrap();
        let mut reg = format!(
            "// Generated by build.rs: kernels/{stem}.cu for the CUDA simulator.\n\
             #include \"{}\"\n#include \"register.h\"\nnamespace {{\n",
            src.display()
        );
        for e in entries(&text) {
            reg.push_str(&format!(
                "const bool reg_{n} = ::sim::add_kernel(\"{stem}\", \"{n}\", &{n}, (unsigned)({mt}));\n",
                n = e.name,
                mt = e.max_threads.as_deref().unwrap_or("0")
            ));
        }
        reg.push_str(&format!(
            "const bool reg_module = ::sim::add_module(\"{stem}\", {}ull, 0x{:016x}ull);\n}}\n",
            image.len(),
            fnv1a(&image)
        ));
        let path = dir.join(format!("kernel_{stem}.cpp"));
        std::fs::write(&path, reg).unwrap();
        units.push((
            path,
            vec![
                "-include".into(),
                shim.display().to_string(),
                include.clone(),
                host_headers.clone(),
                // Kernel code written for nvcc: parameters unused on some paths, sign mixes.
                "-Wno-unused-parameter".into(),
                "-Wno-sign-compare".into(),
                "-Wno-unused-variable".into(),
                "-Wno-unused-but-set-variable".into(),
                "-Wno-unknown-pragmas".into(),
                // An index outside a fixed-size array (static __shared__, register arrays) traps
                // (ud2), and the fault handler reports kernel, block and thread.
                "-fsanitize=bounds".into(),
                "-fsanitize-undefined-trap-on-error".into(),
            ],
        ));
    }
    let mut runtime = vec![];
    let mut cublas = vec![];
    let mut names: Vec<PathBuf> = std::fs::read_dir(&sim)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
        .collect();
    names.sort();
    for p in names {
        let is_blas = p
            .file_stem()
            .is_some_and(|s| s.to_string_lossy().starts_with("cublas"));
        let unit = (p, vec![include.clone()]);
        if is_blas {
            cublas.push(unit);
        } else {
            runtime.push(unit);
        }
    }
    units.extend(runtime);
    let objs = compile(&units, &dir);
    let libcuda = dir.join("libcuda.so");
    link(&objs, "libcuda.so", &libcuda, &[]);
    let blas_objs = compile(&cublas, &dir);
    let libcublas = dir.join("libcublas.so");
    let libdir = format!("-L{}", dir.display());
    link(&blas_objs, "libcublas.so", &libcublas, &[&libdir, "-lcuda"]);

    std::fs::write(
        out.join("sim.rs"),
        format!(
            "/// The CUDA simulator's stand-ins for libcuda and libcublas, built by build.rs.\n\
             pub const LIBCUDA: &[u8] = include_bytes!({:?});\n\
             pub const LIBCUBLAS: &[u8] = include_bytes!({:?});\n",
            libcuda.display().to_string(),
            libcublas.display().to_string()
        ),
    )
    .unwrap();
}
