fn main() {
    std::process::exit(xenmaint::cli::main());
}
