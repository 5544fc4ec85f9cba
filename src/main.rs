mod cli;

fn main() -> std::process::ExitCode {
    come_repro::mkl_dispatch::reproducible_across_threads();
    cli::main()
}
