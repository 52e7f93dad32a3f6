fn main() { println!("I am not a job"); }
