//! `instantchat-bench`: see the library for what it does and `--help` for how.

/// The allocator the services use. The floor publishes with ingest's own publisher, so it
/// allocates as ingest does; with glibc's malloc, freeing on the runtime's threads what the
/// floor's message thread allocated took a tenth of the bench's publishing CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    instantchat_bench::main()
}
