//! `SAMPLE CHUNK_BYTES SECS`: bench/codec's candidates over SAMPLE natively, with the
//! native-only ones (C zstd, ring's AEADs, SHA-256 with the CPU's extensions). One JSON
//! line per candidate, as `codec-guest` prints them inside the sandbox.

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [sample, chunk, secs] = args.as_slice() else { anyhow::bail!("usage: codec-native SAMPLE CHUNK_BYTES SECS") };
    let sample = std::fs::read(sample)?;
    let (chunk, secs): (usize, f64) = (chunk.parse()?, secs.parse()?);
    for r in codec_bench::portable(&sample, chunk, secs).into_iter().chain(codec_bench::native_only(&sample, chunk, secs)) {
        println!("{}", r.json());
    }
    Ok(())
}
