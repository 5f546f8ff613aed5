fn main() {
    print!("{}", kadscale_operator::crd::crd_yaml().unwrap());
}
