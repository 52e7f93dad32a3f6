//! `SAMPLE CHUNK_BYTES SECS`: bench/codec's candidates over the file SAMPLE (in the job's
//! mapped directory), in chunks of CHUNK_BYTES, about SECS seconds each, inside the sandbox;
//! plus the host's native SHA-256 (`sha256-chunks`), what a job gets when the host offers
//! a codec. One JSON line per candidate.

type Result<T> = std::result::Result<T, Box<dyn std::error::Error>>;

fn run(args: Vec<String>) -> Result<()> {
    let [sample, chunk, secs] = args.as_slice() else { return Err("usage: SAMPLE CHUNK_BYTES SECS".into()) };
    let sample = std::fs::read(sample)?;
    let chunk: usize = chunk.parse()?;
    let secs: f64 = secs.parse()?;
    let mut results = codec_bench::portable(&sample, chunk, secs);
    let piece = u32::try_from(chunk.max(4096))?;
    results.push(codec_bench::time("host-sha256-chunks", &sample, 16 << 20, secs, |c| {
        std::hint::black_box(rbd_wasm_guest::sha256_chunks(c, piece));
        0
    }));
    for r in results {
        println!("{}", r.json());
    }
    Ok(())
}

rbd_wasm_guest::job!(run);
