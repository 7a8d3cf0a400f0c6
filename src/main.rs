//! The `bitune-rt` command line: one thin function per subcommand; the work lives in the
//! library's jobs (`bitune_rt::jobs`).

use anyhow::{bail, Result};
use bitune_rt::bitune::engine::PromptMask;
use bitune_rt::cli;
use bitune_rt::cli::device::Device;
use bitune_rt::jobs::generate::{GenerateJob, ModelSpec};
use bitune_rt::jobs::score::{read_requests, ScoreJob};
use clap::{Parser, Subcommand};
use std::io::Write;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "bitune-rt",
    version,
    about = "Bitune: bidirectional instruction-tuning runtime"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::Args)]
struct ModelArgs {
    /// Hugging Face checkpoint folder or .gguf file (default: SmolLM2-135M-Instruct)
    #[arg(long)]
    model: Option<PathBuf>,
    /// Adapter folder written by `train` (or PEFT)
    #[arg(long)]
    adapter: Option<PathBuf>,
    /// How the base model reads the prompt (no adapter)
    #[arg(long, value_enum, default_value_t = PromptMask::Causal)]
    prompt_mask: PromptMask,
    /// cpu, cuda or cuda:N (a build with `--features cuda`; BITUNE_CUDA_SIM=1 simulates one)
    #[arg(long, default_value = "cpu")]
    device: Device,
    /// CPU threads (default: all cores)
    #[arg(long)]
    threads: Option<usize>,
}

#[derive(Subcommand)]
enum Cmd {
    /// Generate text after a prompt (streams to stdout, timing to stderr)
    Generate {
        #[command(flatten)]
        m: ModelArgs,
        #[arg(long)]
        prompt: String,
        #[arg(long, default_value_t = 128)]
        max_new: usize,
        #[arg(long, default_value_t = 0.0)]
        temperature: f32,
        #[arg(long, default_value_t = 1.0)]
        top_p: f32,
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Wrap the prompt in the model's chat template
        #[arg(long)]
        chat: bool,
    },
    /// Log-likelihood of continuations (lm-evaluation-harness's loglikelihood request)
    Score {
        #[command(flatten)]
        m: ModelArgs,
        #[arg(long, requires = "continuation", conflicts_with = "requests")]
        context: Option<String>,
        #[arg(long, requires = "context")]
        continuation: Option<String>,
        /// JSONL file with one {"context":…, "continuation":…} per line
        #[arg(long)]
        requests: Option<PathBuf>,
    },
    /// Train Bitune (or the LoRA baseline / an ablation) adapters
    Train(Box<cli::train::TrainArgs>),
    /// Zero-shot evaluation (PIQA, ARC, CSQA, SIQA, MMLU, GSM8K, synthetic:*)
    Eval(cli::eval::EvalArgs),
    /// Train several methods with the same budget and seeds, evaluate each, tabulate mean ± std
    Compare(Box<cli::compare::CompareArgs>),
    /// Data utilities
    Data {
        #[command(subcommand)]
        cmd: cli::data::DataCmd,
    },
    /// Benchmarks: prefill/decode speed, train step time
    Bench(cli::bench::BenchArgs),
}

impl From<ModelArgs> for ModelSpec {
    fn from(m: ModelArgs) -> Self {
        ModelSpec {
            model: m.model,
            adapter: m.adapter,
            prompt_mask: m.prompt_mask,
            device: m.device,
            threads: m.threads,
        }
    }
}

fn cmd_generate(job: &GenerateJob) -> Result<()> {
    let mut out = std::io::stdout();
    let s = bitune_rt::jobs::generate::run(job, |piece| {
        let _ = out.write_all(piece.as_bytes());
        let _ = out.flush();
    })?;
    println!();
    eprintln!(
        "[{} prompt tokens: prefill {:.1} ms ({:.1} tok/s); {} new tokens: {:.1} ms/token ({:.1} tok/s)]",
        s.prompt_tokens,
        s.prefill_s * 1e3,
        s.prompt_tokens as f64 / s.prefill_s,
        s.new_tokens,
        s.decode_s * 1e3 / s.new_tokens.max(1) as f64,
        s.new_tokens as f64 / s.decode_s.max(1e-9)
    );
    Ok(())
}

impl Cmd {
    /// The `--threads` the command was given.
    fn threads(&self) -> Option<usize> {
        match self {
            Cmd::Generate { m, .. } | Cmd::Score { m, .. } => m.threads,
            Cmd::Train(a) => a.threads,
            Cmd::Eval(a) => a.threads,
            Cmd::Compare(a) => a.threads,
            Cmd::Bench(a) => a.threads,
            Cmd::Data { .. } => None,
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.cmd {
        Cmd::Generate {
            m,
            prompt,
            max_new,
            temperature,
            top_p,
            seed,
            chat,
        } => cmd_generate(&GenerateJob {
            model: m.into(),
            prompt,
            max_new,
            temperature,
            top_p,
            seed,
            chat,
        }),
        Cmd::Score {
            m,
            context,
            continuation,
            requests,
        } => {
            let reqs = match (context, continuation, requests) {
                (Some(c), Some(x), None) => vec![(c, x)],
                (None, None, Some(path)) => read_requests(&path)?,
                _ => bail!("give --context and --continuation, or --requests FILE.jsonl"),
            };
            cli::score::run(&ScoreJob {
                model: m.into(),
                requests: reqs,
            })
        }
        Cmd::Train(a) => cli::train::run(*a),
        Cmd::Eval(a) => cli::eval::run(a),
        Cmd::Compare(a) => cli::compare::run(*a),
        Cmd::Data { cmd } => cli::data::run(cmd),
        Cmd::Bench(a) => cli::bench::run(a),
    }
}

fn main() {
    let cli = Cli::parse();
    // The whole command runs on a thread of the CPU pool: its parallel ops then share their work
    // with the other threads directly, where a thread outside the pool hands each op over and
    // waits for it (a wake-up of several µs, and a decoded token runs 300+ such ops).
    let r =
        bitune_rt::jobs::set_threads(cli.cmd.threads()).and_then(|()| rayon::scope(|_| run(cli)));
    if let Err(e) = r {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
