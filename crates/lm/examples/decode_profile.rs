//! Times the pieces of one decoding step of a model (GGUF or HF folder) on the CPU (1 row,
//! 4 rows at one position, 4 rows at different positions as agents' rows are), and the
//! prefill of 256-token chunks after the prompt (an observation appended to a context):
//! `cargo run --release -p swegym-lm --example decode_profile -- MODEL [f32|bf16] [threads]
//! [kv dtype] [prompt length] [prefill dtype]`.

use std::time::Instant;

use swegym_lm::{Dtype, GenerationRequest, Generator, SamplingParams};

fn main() {
    swegym_lm::init_cpu_runtime();
    let args: Vec<String> = std::env::args().collect();
    let dtype: Dtype = args.get(2).map_or("f32", String::as_str).parse().unwrap();
    tch::set_num_threads(args.get(3).map_or(2, |t| t.parse().unwrap()));
    let (mut model, tok) = swegym_lm::load_model(std::path::Path::new(&args[1]), dtype, tch::Device::Cpu).unwrap();
    if let Some(kv) = args.get(4) {
        model.set_kv_dtype(kv.parse::<swegym_lm::KvDtype>().unwrap());
    }
    if let Some(prefill) = args.get(6) {
        model.set_prefill_dtype(prefill.parse().unwrap());
    }
    let prompt_len: usize = args.get(5).map_or(512, |n| n.parse().unwrap());
    let _guard = tch::no_grad_guard();
    let x = tch::Tensor::randn([1, 1, 576], (tch::Kind::Float, tch::Device::Cpu)).to_kind(dtype.kind());
    let w = tch::Tensor::randn([1536 * 2, 576], (tch::Kind::Float, tch::Device::Cpu)).to_kind(dtype.kind());
    let t = Instant::now();
    for _ in 0..1000 {
        let _ = x.linear::<tch::Tensor>(&w, None);
    }
    eprintln!("gemv 1x576x3072: {:.1} us", t.elapsed().as_secs_f64() * 1e3);
    // rows at one position (a plain block write), then at different positions (a scatter)
    for (batch, stagger) in [(1usize, 0usize), (4, 0), (4, 1)] {
        let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(64) };
        let mut g = Generator::new(&model, tok.clone());
        let t0 = Instant::now();
        let mut prompt_tokens = 0;
        for i in 0..batch {
            let prompt: Vec<u32> = (0..(prompt_len + i * stagger) as u32).map(|i| 100 + (i * 7919) % 40000).collect();
            prompt_tokens += prompt.len();
            let _ = g.add(i as u64, GenerationRequest::new(prompt, params.clone())).unwrap();
        }
        let t1 = Instant::now();
        let mut steps = 0;
        while !g.is_empty() {
            g.step().unwrap();
            steps += 1;
        }
        let dt = t1.elapsed().as_secs_f64();
        eprintln!(
            "batch {batch}{}: prefill {:.0} tok/s, decode {:.1} ms/step, {:.1} tok/s",
            if stagger > 0 { " (rows at different positions)" } else { "" },
            prompt_tokens as f64 / (t1 - t0).as_secs_f64(),
            1e3 * dt / steps as f64,
            (batch * steps) as f64 / dt
        );
    }
    // observations' prefills: chunks of 256 tokens after the prompt, the context growing
    let mut cache = model.new_cache();
    let row = cache.push_row(prompt_len as i64 + 256 * 8);
    let ids: Vec<u32> = (0..prompt_len as u32).map(|i| 100 + (i * 7919) % 40000).collect();
    let _ = model.prefill_row(&mut cache, row, &ids);
    for chunk in 0..8 {
        let more: Vec<u32> = (0..256u32).map(|i| 100 + ((i + chunk) * 104729) % 40000).collect();
        let (before, t) = (cache.row_len(row), Instant::now());
        let _ = model.prefill_row(&mut cache, row, &more);
        let ms = t.elapsed().as_secs_f64() * 1e3;
        eprintln!("prefill 256 after {before}: {ms:.1} ms ({:.2} ms/token)", ms / 256.0);
    }
}
