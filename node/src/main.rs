fn main() {
    eprintln!("dht-node: under construction");
    std::process::exit(2);
}
