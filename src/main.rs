#[global_allocator]
static ALLOCATOR: xenmaint::allocator::Allocator = xenmaint::allocator::Allocator {};

fn main() {
    std::process::exit(xenmaint::cli::main());
}
