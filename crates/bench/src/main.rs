//! `instantchat-bench`: see the library for what it does and `--help` for how.

fn main() -> std::process::ExitCode {
    instantchat_bench::main()
}
