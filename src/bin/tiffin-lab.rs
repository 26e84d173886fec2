fn main() {
    eprintln!("tiffin-lab: not built yet");
    std::process::exit(2);
}
