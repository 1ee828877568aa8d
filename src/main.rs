fn main() -> std::process::ExitCode {
    kubeconfig_authority::cli::main()
}
