//! C programs linked against `libbitune_rt.a` with the system C compiler: `ffi/example.c`
//! generates exactly what `bitune-rt generate` does, `ffi/misuse.c` gets the right status for
//! every misuse, and both run clean under valgrind (skipped with a message where it is absent).

use super::root;
use super::util::{ADAPTER, MODEL};
use bitune_rt::backend::cpu::Cpu;
use bitune_rt::bitune::engine::{Engine, PromptMask};
use bitune_rt::bitune::generate::{generate, GenOptions};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

const PROMPT: &str = "Question: What is 7 times 6?\n\nAnswer:";

/// What the static library needs from the system, from
/// `cargo rustc --lib -- --print native-static-libs` (README.md, "C API", shows the same line).
const NATIVE_LIBS: &[&str] = &[
    "-lgcc_s",
    "-lutil",
    "-lrt",
    "-lpthread",
    "-lm",
    "-ldl",
    "-lc",
];

fn check(what: &str, out: &Output) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\n--- stdout\n{}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The staticlib built from the current sources. `cargo test` builds `libbitune_rt.a` next to
/// the rlib it links, but only a root build copies it to `target/<profile>/`, so the freshest
/// one has no fixed name: ask cargo for it. This `cargo build --lib` reuses the lib the test was
/// linked against (same profile, target dir and features), so it costs no compilation.
fn staticlib() -> &'static Path {
    static LIB: OnceLock<PathBuf> = OnceLock::new();
    LIB.get_or_init(|| {
        let exe = std::env::current_exe().unwrap(); // <target>/<profile>/deps/ffi-<hash>
        let profile_dir = exe.parent().unwrap().parent().unwrap();
        let profile = match profile_dir.file_name().unwrap().to_str().unwrap() {
            "debug" => "dev",
            p => p,
        };
        let features: Vec<&str> = [
            ("cuda", cfg!(feature = "cuda")),
            ("parquet", cfg!(feature = "parquet")),
        ]
        .into_iter()
        .filter_map(|(f, on)| on.then_some(f))
        .collect();
        let mut cmd = Command::new(option_env!("CARGO").unwrap_or("cargo"));
        cmd.args(["build", "--lib", "--message-format=json-render-diagnostics"])
            .args(["--profile", profile])
            .arg("--target-dir")
            .arg(profile_dir.parent().unwrap())
            .arg("--manifest-path")
            .arg(root().join("Cargo.toml"));
        if !features.is_empty() {
            cmd.arg("--features").arg(features.join(","));
        }
        let out = cmd.output().expect("running cargo");
        check("cargo build --lib", &out);
        let stdout = String::from_utf8(out.stdout).unwrap();
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == "bitune_rt")
            .flat_map(|v| v["filenames"].as_array().cloned().unwrap_or_default())
            .filter_map(|f| f.as_str().map(PathBuf::from))
            .find(|f| f.extension().is_some_and(|e| e == "a"))
            .expect("cargo reported no libbitune_rt.a")
    })
}

/// Compiles `ffi/<name>.c` against the staticlib, once per test process.
fn c_program(name: &'static str, slot: &'static OnceLock<PathBuf>) -> &'static Path {
    slot.get_or_init(|| {
        let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("ffi");
        std::fs::create_dir_all(&dir).unwrap();
        let exe = dir.join(name);
        // Link to a private name, then rename: another test process (e.g. a concurrent
        // `cargo test`) may be running the previous binary, which writing in place would hit
        // (ETXTBSY); a rename leaves its open file intact.
        let tmp = dir.join(format!("{name}.{}.tmp", std::process::id()));
        let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
        let out = Command::new(&cc)
            .args(["-std=c99", "-Wall", "-Wextra", "-g", "-I"])
            .arg(root().join("ffi"))
            .arg(root().join(format!("ffi/{name}.c")))
            .arg(staticlib())
            .args(NATIVE_LIBS)
            .arg("-o")
            .arg(&tmp)
            .output()
            .unwrap_or_else(|e| panic!("running {cc}: {e}"));
        check(&format!("{cc} ffi/{name}.c"), &out);
        std::fs::rename(&tmp, &exe).unwrap();
        exe
    })
}

fn example() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    c_program("example", &EXE)
}

fn misuse() -> &'static Path {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    c_program("misuse", &EXE)
}

fn run(exe: &Path, args: &[&str]) -> Output {
    Command::new(exe)
        .args(args)
        .current_dir(root())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", exe.display()))
}

#[test]
fn c_example_generates_what_the_cli_generates() {
    let out = run(example(), &[MODEL, ADAPTER, PROMPT, "16"]);
    check("ffi/example.c", &out);
    let stdout = String::from_utf8(out.stdout).unwrap();
    let ids: Vec<u32> = stdout
        .split_whitespace()
        .map(|t| t.parse().unwrap())
        .collect();
    assert!(!ids.is_empty(), "the example generated nothing");

    // Token for token what the CLI runs: the same library call with the CLI's defaults.
    let e = Engine::load(
        Cpu,
        &root().join(MODEL),
        Some(&root().join(ADAPTER)),
        PromptMask::Causal,
    )
    .unwrap();
    let prompt = e.model.encode(PROMPT, true).unwrap();
    let o = GenOptions {
        max_new: 16,
        temperature: 0.0,
        top_p: 1.0,
        seed: 0,
        stops: vec![],
    };
    assert_eq!(ids, generate(&e, &prompt, &o, |_| {}).unwrap().ids);

    // And the CLI binary itself prints the same text (it prints text, not ids).
    let cli = Command::new(env!("CARGO_BIN_EXE_bitune-rt"))
        .args([
            "generate",
            "--model",
            MODEL,
            "--adapter",
            ADAPTER,
            "--prompt",
            PROMPT,
        ])
        .args(["--max-new", "16"])
        .current_dir(root())
        .output()
        .unwrap();
    check("bitune-rt generate", &cli);
    let cli_text = String::from_utf8(cli.stdout).unwrap();
    let cli_text = cli_text.strip_suffix('\n').unwrap();
    assert_eq!(e.model.decode(&ids).unwrap(), cli_text);
    // The example's own detokenized text (stderr) is that text too.
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        format!("{cli_text}\n")
    );
}

#[test]
fn c_misuse_gets_a_status_and_message_for_each_mistake() {
    let out = run(misuse(), &[MODEL, ADAPTER]);
    check("ffi/misuse.c", &out);
    assert!(String::from_utf8_lossy(&out.stdout).contains("0 failure(s)"));
}

#[test]
fn c_programs_are_clean_under_valgrind() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("SKIP: valgrind is not installed; the C programs ran without it");
        return;
    }
    let supp = root().join("ffi/valgrind.supp");
    let cases: [(&Path, &[&str]); 2] = [
        (example(), &[MODEL, ADAPTER, PROMPT, "16"]),
        (misuse(), &[MODEL, ADAPTER]),
    ];
    for (exe, args) in cases {
        let out = Command::new("valgrind")
            .args([
                "--error-exitcode=1",
                "--leak-check=full",
                "--num-callers=40",
            ])
            .arg(format!("--suppressions={}", supp.display()))
            .arg(exe)
            .args(args)
            .current_dir(root())
            .output()
            .unwrap();
        check(&format!("valgrind {}", exe.display()), &out);
    }
}
