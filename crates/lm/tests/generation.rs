//! Batched generation: sequences of different lengths decoding together (joining and
//! leaving the batch) give exactly the tokens each gives alone; greedy decoding equals the
//! argmax of the uncached forward (itself checked against transformers); seeded sampling
//! is reproducible; stop strings and EOS cut correctly; the threaded [`Engine`] serves
//! concurrent tokio tasks.

mod common;

use common::{byte_tokenizer, fixture, smollm2_gguf, tiny_llama};
use swegym_lm::{
    CausalLm, Completion, DecodeWeights, Dtype, Engine, EngineOptions, FinishReason, GenerationRequest, Generator, GgufFile,
    GenerationStats, KvDtype, SamplingParams, Tokenizer,
};
use tch::{Device, Tensor};

/// Prompts of different lengths (ids below 256: bytes of the tiny tokenizer).
fn tiny_prompts() -> Vec<Vec<u32>> {
    [3usize, 17, 1, 9, 30, 5, 12]
        .iter()
        .enumerate()
        .map(|(i, &len)| (0..len).map(|j| ((i * 37 + j * 11 + 5) % 250) as u32).collect())
        .collect()
}

fn requests(prompts: &[Vec<u32>], params: impl Fn(usize) -> SamplingParams) -> Vec<GenerationRequest> {
    prompts.iter().enumerate().map(|(i, p)| GenerationRequest::new(p.clone(), params(i))).collect()
}

fn run(model: &CausalLm, tok: &Tokenizer, reqs: Vec<GenerationRequest>, max_batch: usize) -> Vec<Completion> {
    Generator::new(model, tok.clone()).run(reqs, max_batch).into_iter().map(Result::unwrap).collect()
}

fn alone(model: &CausalLm, tok: &Tokenizer, reqs: &[GenerationRequest]) -> Vec<Completion> {
    reqs.iter().map(|r| run(model, tok, vec![r.clone()], 1).remove(0)).collect()
}

/// Each request alone through a generator that keeps nothing (the reference that reuse must
/// match): the generator, and the completions, none of which reused a prompt token.
fn reference_keeping_nothing<'m>(model: &'m CausalLm, tok: &Tokenizer, reqs: &[GenerationRequest]) -> (Generator<'m>, Vec<Completion>) {
    let mut g = Generator::new(model, tok.clone());
    g.set_prefix_budget(0);
    let done: Vec<Completion> = reqs.iter().map(|r| g.run(vec![r.clone()], 1).remove(0).unwrap()).collect();
    assert!(done.iter().all(|c| c.cached_prompt_tokens == 0));
    (g, done)
}

fn tokens(c: &[Completion]) -> Vec<Vec<u32>> {
    c.iter().map(|c| c.tokens.clone()).collect()
}

/// Different token limits per request, so rows leave at different steps and waiting
/// requests join mid-batch.
fn greedy_params(i: usize) -> SamplingParams {
    SamplingParams { ignore_eos: true, ..SamplingParams::greedy(8 + 9 * i) }
}

#[test]
fn tiny_batched_greedy_equals_each_prompt_alone() {
    let (model, tok) = (tiny_llama(Dtype::F32), byte_tokenizer());
    let reqs = requests(&tiny_prompts(), greedy_params);
    let single = alone(&model, &tok, &reqs);
    for max_batch in [2, 4, 16] {
        let batched = run(&model, &tok, reqs.clone(), max_batch);
        assert_eq!(tokens(&batched), tokens(&single), "max_batch {max_batch}");
    }
    for (c, r) in single.iter().zip(&reqs) {
        assert_eq!(c.tokens.len(), r.params.max_new_tokens);
        assert_eq!(c.finish_reason, FinishReason::Length);
        assert_eq!(c.prompt_tokens, r.prompt.len());
    }
}

#[test]
fn tiny_greedy_equals_argmax_of_uncached_forward() {
    let (model, tok) = (tiny_llama(Dtype::F32), byte_tokenizer());
    let reqs = requests(&tiny_prompts()[..3], greedy_params);
    for (c, r) in run(&model, &tok, reqs.clone(), 3).iter().zip(&reqs) {
        let mut seq: Vec<i64> = r.prompt.iter().map(|&t| i64::from(t)).collect();
        for &t in &c.tokens {
            let logits = model.forward(&Tensor::from_slice(&seq).unsqueeze(0));
            assert_eq!(logits.get(0).get(-1).argmax(-1, false).int64_value(&[]), i64::from(t));
            seq.push(i64::from(t));
        }
    }
}

#[test]
fn tiny_bf16_batched_greedy_equals_alone() {
    let (model, tok) = (tiny_llama(Dtype::Bf16), byte_tokenizer());
    let reqs = requests(&tiny_prompts(), greedy_params);
    assert_eq!(tokens(&run(&model, &tok, reqs.clone(), 4)), tokens(&alone(&model, &tok, &reqs)));
}

/// A 16-bit or q8 KV cache under an f32 model: rows still give the same tokens in a batch
/// as alone (the kernel reads each row's own keys), and the logits of prefill and decoding
/// stay within the rounding of the keys and values of the f32 cache's.
#[test]
fn tiny_reduced_kv_caches_batch_like_alone_and_stay_near_the_f32_cache() {
    let tok = byte_tokenizer();
    let reference = tiny_llama(Dtype::F32);
    let prompt: Vec<u32> = tiny_prompts()[4].clone();
    let feed = [7u32, 99, 3, 250, 41, 41, 8];
    let logits_of = |model: &CausalLm| {
        let mut cache = model.new_cache();
        let row = cache.push_row(64);
        let mut out = vec![model.prefill_row(&mut cache, row, &prompt)];
        for &t in &feed {
            out.push(model.decode_rows(&mut cache, &[t]).squeeze_dim(0));
        }
        Tensor::stack(&out, 0)
    };
    let want = logits_of(&reference);
    let scale = f64::try_from(want.abs().max()).unwrap();
    for (kv, tol) in [(KvDtype::F16, 2e-3), (KvDtype::Bf16, 2e-2), (KvDtype::Q8, 2e-2)] {
        let mut model = tiny_llama(Dtype::F32);
        model.set_kv_dtype(kv);
        let err = f64::try_from((logits_of(&model) - &want).abs().max()).unwrap();
        assert!(err <= tol * scale, "KV cache {kv}: logits differ by {err} (largest {scale})");
        let reqs = requests(&tiny_prompts(), greedy_params);
        assert_eq!(tokens(&run(&model, &tok, reqs.clone(), 4)), tokens(&alone(&model, &tok, &reqs)), "KV cache {kv}");
    }
}

fn sampling(i: usize) -> SamplingParams {
    SamplingParams {
        max_new_tokens: 12 + 5 * i,
        temperature: 0.8 + 0.1 * i as f32,
        top_k: [0, 50, 5][i % 3],
        top_p: [1.0, 0.9, 0.7][(i / 2) % 3],
        seed: 1000 + i as u64,
        ignore_eos: true,
        ..SamplingParams::default()
    }
}

#[test]
fn tiny_seeded_sampling_is_reproducible_alone_and_in_a_batch() {
    let (model, tok) = (tiny_llama(Dtype::F32), byte_tokenizer());
    let reqs = requests(&tiny_prompts(), sampling);
    let first = alone(&model, &tok, &reqs);
    assert_eq!(tokens(&alone(&model, &tok, &reqs)), tokens(&first));
    assert_eq!(tokens(&run(&model, &tok, reqs.clone(), 3)), tokens(&first));
    // sampling is not greedy, and another seed gives another continuation
    let greedy = run(&model, &tok, requests(&tiny_prompts(), |i| greedy_like(&sampling(i))), 8);
    assert_ne!(tokens(&greedy), tokens(&first));
    let reseeded = requests(&tiny_prompts(), |i| SamplingParams { seed: 7 + i as u64, ..sampling(i) });
    let other = run(&model, &tok, reseeded, 8);
    let same = tokens(&other).iter().zip(tokens(&first)).filter(|(a, b)| *a == b).count();
    assert!(same <= 1, "{same} of {} sequences unchanged by the seed", first.len());
}

fn greedy_like(p: &SamplingParams) -> SamplingParams {
    SamplingParams { temperature: 0.0, ..p.clone() }
}

#[test]
fn sampler_respects_top_k_and_top_p() {
    use rand::SeedableRng;
    let logits = [1.0f32, 5.0, 3.0, 4.9, -2.0, f32::NEG_INFINITY];
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let draw = |p: SamplingParams, rng: &mut rand_chacha::ChaCha8Rng| {
        let mut seen: Vec<u32> = (0..400).map(|_| swegym_lm::generate::sample(&logits, &p, rng)).collect();
        seen.sort_unstable();
        seen.dedup();
        seen
    };
    let base = SamplingParams { temperature: 1.0, ..SamplingParams::default() };
    assert_eq!(draw(SamplingParams { top_k: 2, ..base.clone() }, &mut rng), vec![1, 3]);
    assert_eq!(draw(SamplingParams { top_k: 1, ..base.clone() }, &mut rng), vec![1]);
    // p(1) = 0.49, p(3) = 0.45, p(2) = 0.07: 0.9 needs tokens 1 and 3
    assert_eq!(draw(SamplingParams { top_p: 0.9, ..base.clone() }, &mut rng), vec![1, 3]);
    assert_eq!(draw(SamplingParams { top_p: 0.3, ..base.clone() }, &mut rng), vec![1]);
    // everything finite can come out at a high temperature; -inf never
    assert_eq!(draw(SamplingParams { temperature: 50.0, ..base }, &mut rng), vec![0, 1, 2, 3, 4]);
}

/// Without a top-k or top-p cut the sampler draws from the whole vocabulary (its weights in
/// vector lanes): the frequencies of 40000 draws are the softmax's to within 0.01, tokens
/// whose logit is NaN or ±inf never come out, and a seed gives the same draws again.
#[test]
fn sampler_without_a_cut_draws_the_softmax() {
    use rand::SeedableRng;
    let mut logits = vec![f32::NEG_INFINITY; 1000];
    logits[..5].copy_from_slice(&[1.0, 5.0, 3.0, 4.9, -2.0]);
    logits[7] = f32::NAN;
    logits[999] = f32::INFINITY;
    for temperature in [1.0f32, 2.0] {
        let p = SamplingParams { temperature, ..SamplingParams::default() };
        let draws = |seed: u64| {
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
            (0..40_000).map(|_| swegym_lm::generate::sample(&logits, &p, &mut rng)).collect::<Vec<u32>>()
        };
        let seen = draws(11);
        assert_eq!(seen, draws(11));
        let exps: Vec<f64> = logits[..5].iter().map(|&l| f64::from(l / temperature).exp()).collect();
        let total: f64 = exps.iter().sum();
        for (token, e) in exps.iter().enumerate() {
            let freq = seen.iter().filter(|&&t| t as usize == token).count() as f64 / seen.len() as f64;
            assert!((freq - e / total).abs() < 0.01, "t {temperature}, token {token}: {freq} vs {}", e / total);
        }
        assert!(seen.iter().all(|&t| t < 5), "a non-finite logit was drawn");
    }
}

#[test]
fn tiny_stop_strings_cut_the_text_before_the_first_stop() {
    let (model, tok) = (tiny_llama(Dtype::F32), byte_tokenizer());
    let prompt = tiny_prompts()[1].clone();
    let full = run(&model, &tok, vec![GenerationRequest::new(prompt.clone(), greedy_params(3))], 1).remove(0);
    let text = &full.text;
    let chars: Vec<char> = text.chars().collect();
    assert!(chars.len() >= 20, "{text:?}");
    // a stop string from the middle of the greedy text, and one that never occurs
    let stop: String = chars[10..13].iter().collect();
    let at = text.find(&stop).unwrap();
    let params = SamplingParams { stop: vec!["never occurs here".into(), stop.clone()], ..greedy_params(3) };
    let cut = run(&model, &tok, vec![GenerationRequest::new(prompt, params)], 1).remove(0);
    assert_eq!(cut.text, text[..at]);
    assert_eq!(cut.finish_reason, FinishReason::Stop(stop.clone()));
    // generation stopped at the token that completed the stop string
    assert!(cut.tokens.len() < full.tokens.len());
    assert_eq!(cut.tokens[..], full.tokens[..cut.tokens.len()]);
    assert!(tok.decode(&cut.tokens, false).unwrap().contains(&stop));
    assert!(!tok.decode(&cut.tokens[..cut.tokens.len() - 1], false).unwrap().contains(&stop));
}

#[test]
fn tiny_eos_ends_generation_and_is_left_out_of_the_text() {
    let (model, tok) = (tiny_llama(Dtype::F32), byte_tokenizer());
    let prompt = tiny_prompts()[4].clone();
    let full = run(&model, &tok, vec![GenerationRequest::new(prompt.clone(), greedy_params(2))], 1).remove(0);
    // make the 5th generated token a stop token id: generation must end right there
    let stop_id = full.tokens[4];
    let first = full.tokens.iter().position(|&t| t == stop_id).unwrap();
    let params = SamplingParams { stop_token_ids: vec![stop_id], ..greedy_params(2) };
    let c = run(&model, &tok, vec![GenerationRequest::new(prompt, params)], 1).remove(0);
    assert_eq!(c.finish_reason, FinishReason::Eos);
    assert_eq!(c.tokens, full.tokens[..=first]);
    assert_eq!(c.text, tok.decode(&full.tokens[..first], false).unwrap());
}

#[test]
fn bad_requests_fail_alone() {
    let (model, tok) = (tiny_llama(Dtype::F32), byte_tokenizer());
    let mut reqs = requests(&tiny_prompts()[..2], greedy_params);
    reqs.push(GenerationRequest::new(vec![], greedy_params(0)));
    reqs.push(GenerationRequest::new(vec![1; 200], greedy_params(0)));
    reqs.push(GenerationRequest::new(vec![1], SamplingParams { top_p: 0.0, ..greedy_params(0) }));
    let results = Generator::new(&model, tok.clone()).run(reqs, 4);
    assert!(results[0].is_ok() && results[1].is_ok());
    let errors: Vec<String> = results[2..].iter().map(|r| r.as_ref().unwrap_err().to_string()).collect();
    assert!(errors[0].contains("empty"), "{errors:?}");
    assert!(errors[1].contains("200 tokens") && errors[1].contains("128"), "{errors:?}");
    assert!(errors[2].contains("top_p"), "{errors:?}");
    // a long prompt near the context limit ends with Length when the context is full
    let long = GenerationRequest::new(vec![7; 120], greedy_params(20));
    let c = run(&model, &tok, vec![long], 1).remove(0);
    assert_eq!((c.finish_reason, c.tokens.len()), (FinishReason::Length, 128 - 120 + 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_serves_concurrent_tasks_with_the_same_tokens_as_alone() {
    let tok = byte_tokenizer();
    let reqs = requests(&tiny_prompts(), |i| if i % 2 == 0 { greedy_params(i) } else { sampling(i) });
    let want = tokens(&alone(&tiny_llama(Dtype::F32), &tok, &reqs));
    let engine = std::sync::Arc::new(Engine::spawn(
        tiny_llama(Dtype::F32),
        tok,
        EngineOptions { max_batch: 3, ..EngineOptions::default() },
    ));
    let tasks: Vec<_> = reqs
        .into_iter()
        .map(|r| {
            let engine = std::sync::Arc::clone(&engine);
            tokio::spawn(async move { engine.generate(r).await.unwrap().tokens })
        })
        .collect();
    let mut got = Vec::new();
    for t in tasks {
        got.push(t.await.unwrap());
    }
    assert_eq!(got, want);
    // a bad request is answered with its error; the engine keeps serving
    let err = engine.generate(GenerationRequest::new(vec![], greedy_params(0))).await.unwrap_err();
    assert!(err.to_string().contains("empty"));
    let again = engine.generate(GenerationRequest::new(vec![1, 2], greedy_params(0))).await.unwrap();
    assert_eq!(again.tokens.len(), 8);
}

/// A conversation of `turns` requests in one session: each prompt is the previous prompt,
/// the reply and an "observation" (some fixed tokens). Returns the completions with and
/// without the session's kept keys/values; the caller compares them.
fn session_turns(model: &CausalLm, tok: &Tokenizer, first: Vec<u32>, observation: &[u32], turns: usize, params: SamplingParams) -> (Vec<Completion>, Vec<Completion>) {
    let mut with = Generator::new(model, tok.clone());
    let mut prompt = first;
    let (mut kept, mut fresh) = (Vec::new(), Vec::new());
    for _ in 0..turns {
        let request = GenerationRequest { prompt: prompt.clone(), params: params.clone(), session: Some(42), shared_prefix: 0 };
        let c = with.run(vec![request], 1).remove(0).unwrap();
        fresh.push(run(model, tok, vec![GenerationRequest::new(prompt.clone(), params.clone())], 1).remove(0));
        prompt.extend_from_slice(&c.tokens);
        prompt.extend_from_slice(observation);
        kept.push(c);
    }
    (kept, fresh)
}

#[test]
fn tiny_session_continues_from_kept_keys_and_values_with_the_same_tokens() {
    let (model, tok) = (tiny_llama(Dtype::F32), byte_tokenizer());
    let params = SamplingParams { ignore_eos: true, ..SamplingParams::greedy(12) };
    let (kept, fresh) = session_turns(&model, &tok, tiny_prompts()[4].clone(), &[10, 20, 30, 40, 50], 4, params.clone());
    assert_eq!(tokens(&kept), tokens(&fresh), "reusing the session's prefix changes no token");
    assert_eq!(kept[0].cached_prompt_tokens, 0);
    for (i, c) in kept.iter().enumerate().skip(1) {
        // every position but the previous reply's last token (generated, never fed) is reused
        assert_eq!(c.cached_prompt_tokens, kept[i - 1].prompt_tokens + 12 - 1, "turn {i}");
        assert_eq!(fresh[i].cached_prompt_tokens, 0);
    }

    // An edited history reuses only the common prefix; another session reuses nothing.
    let mut g = Generator::new(&model, tok.clone());
    let a: Vec<u32> = (0..40).map(|i| (i * 7 % 250) as u32).collect();
    let first = g.run(vec![GenerationRequest { prompt: a.clone(), params: params.clone(), session: Some(1), shared_prefix: 0 }], 1).remove(0).unwrap();
    assert!(g.prefix_bytes() > 0);
    let mut edited = a.clone();
    edited[25] = 3;
    edited.extend_from_slice(&first.tokens);
    let c = g.run(vec![GenerationRequest { prompt: edited.clone(), params: params.clone(), session: Some(1), shared_prefix: 0 }], 1).remove(0).unwrap();
    assert_eq!(c.cached_prompt_tokens, 25);
    assert_eq!(c.tokens, run(&model, &tok, vec![GenerationRequest::new(edited.clone(), params.clone())], 1)[0].tokens);
    let other = g.run(vec![GenerationRequest { prompt: edited.clone(), params: params.clone(), session: Some(2), shared_prefix: 0 }], 1).remove(0).unwrap();
    assert_eq!(other.cached_prompt_tokens, 0);

    // A zero budget keeps nothing.
    g.set_prefix_budget(0);
    assert_eq!(g.prefix_bytes(), 0);
    let again = g.run(vec![GenerationRequest { prompt: edited, params, session: Some(1), shared_prefix: 0 }], 1).remove(0).unwrap();
    assert_eq!(again.cached_prompt_tokens, 0);
}

#[test]
fn tiny_sessions_in_a_batch_match_each_alone() {
    let (model, tok) = (tiny_llama(Dtype::F32), byte_tokenizer());
    let prompts = tiny_prompts();
    let mut g = Generator::new(&model, tok.clone());
    let first: Vec<GenerationRequest> =
        prompts.iter().enumerate().map(|(i, p)| GenerationRequest { prompt: p.clone(), params: greedy_params(i), session: Some(i as u64), shared_prefix: 0 }).collect();
    let replies: Vec<Completion> = g.run(first, 3).into_iter().map(Result::unwrap).collect();
    let second: Vec<GenerationRequest> = prompts
        .iter()
        .zip(&replies)
        .enumerate()
        .map(|(i, (p, r))| {
            let mut prompt = p.clone();
            prompt.extend_from_slice(&r.tokens);
            prompt.extend_from_slice(&[9, 8, 7]);
            GenerationRequest { prompt, params: greedy_params(i), session: Some(i as u64), shared_prefix: 0 }
        })
        .collect();
    let fresh = alone(&model, &tok, &second.iter().map(|r| GenerationRequest::new(r.prompt.clone(), r.params.clone())).collect::<Vec<_>>());
    let continued: Vec<Completion> = g.run(second, 3).into_iter().map(Result::unwrap).collect();
    assert_eq!(tokens(&continued), tokens(&fresh));
    assert!(continued.iter().all(|c| c.cached_prompt_tokens > 0));
}

/// The k samples of one task: sessions whose first prompt is the same. The second and later
/// start from the first one's kept prompt (no prefill), and every reply is the one a
/// generator keeping nothing gives, alone or in a batch.
#[test]
fn tiny_sessions_with_the_same_first_prompt_share_its_prefill() {
    let (model, tok) = (tiny_llama(Dtype::F32), byte_tokenizer());
    let prompt = tiny_prompts()[3].clone();
    let reqs: Vec<GenerationRequest> = (0..4)
        .map(|i| GenerationRequest { prompt: prompt.clone(), params: SamplingParams { seed: 40 + i, ..sampling(1) }, session: Some(100 + i), shared_prefix: 0 })
        .collect();
    let (_, reference) = reference_keeping_nothing(&model, &tok, &reqs);
    for max_batch in [1, 3] {
        let mut g = Generator::new(&model, tok.clone());
        let shared: Vec<Completion> = if max_batch == 1 {
            reqs.iter().map(|r| g.run(vec![r.clone()], 1).remove(0).unwrap()).collect()
        } else {
            g.run(reqs.clone(), max_batch).into_iter().map(Result::unwrap).collect()
        };
        assert_eq!(tokens(&shared), tokens(&reference), "max_batch {max_batch}");
        let cached: Vec<usize> = shared.iter().map(|c| c.cached_prompt_tokens).collect();
        assert_eq!(cached, [0, prompt.len(), prompt.len(), prompt.len()], "max_batch {max_batch}");
        // the seeds differ, so the samples do
        assert!(tokens(&shared).windows(2).any(|w| w[0] != w[1]));
    }
}

/// The k samples of two tasks decoding together; the first prompts start with the same
/// system prompt (66 tokens, more than a 64-key block). A task's later samples
/// copy its kept first prompt and read it from the first sample's row, the other task's
/// rows read the system prompt from there, and every reply is the one a generator keeping
/// nothing gives.
#[test]
fn tiny_samples_of_two_tasks_share_their_first_prompts_in_a_batch() {
    let (model, tok) = (tiny_llama(Dtype::F32), byte_tokenizer());
    let system: Vec<u32> = (0..66).map(|j| ((j * 13 + 7) % 250) as u32).collect();
    let reqs: Vec<GenerationRequest> = (0..6u64)
        .map(|i| {
            let task: Vec<u32> = (0..20 + 10 * (i % 2) as usize).map(|j| ((j * 7 + 31 * (i % 2) as usize + 3) % 250) as u32).collect();
            let params = SamplingParams { seed: 60 + i, ..sampling(1) };
            GenerationRequest { prompt: [system.clone(), task].concat(), params, session: Some(200 + i), shared_prefix: system.len() }
        })
        .collect();
    let (_, reference) = reference_keeping_nothing(&model, &tok, &reqs);
    let mut g = Generator::new(&model, tok.clone());
    let batched: Vec<Completion> = g.run(reqs.clone(), 6).into_iter().map(Result::unwrap).collect();
    assert_eq!(tokens(&batched), tokens(&reference));
    let cached: Vec<usize> = batched.iter().map(|c| c.cached_prompt_tokens).collect();
    assert_eq!(cached, [0, 66, 86, 96, 86, 96]);
}

/// Episodes of different tasks: prompts that start with the same system prompt
/// (`shared_prefix`). Later sessions copy the kept prefix instead of prefilling it, and every
/// reply is the one a generator keeping nothing gives — in the same session or outside any.
/// A prefix as long as the prompt still feeds the prompt's last token. The prefix (70
/// tokens) is longer than a block of the decoding attention (64 keys), so batched rows
/// read that block from one row's copy.
#[test]
fn tiny_prompts_sharing_a_prefix_reuse_it_with_the_same_tokens() {
    let (model, tok) = (tiny_llama(Dtype::F32), byte_tokenizer());
    let system: Vec<u32> = (0..70).map(|j| ((j * 13 + 7) % 250) as u32).collect();
    let reqs: Vec<GenerationRequest> = tiny_prompts()
        .into_iter()
        .enumerate()
        .map(|(i, task)| {
            let prompt = [system.clone(), task].concat();
            GenerationRequest { prompt, params: SamplingParams { seed: 7 + i as u64, ..sampling(1) }, session: Some(i as u64), shared_prefix: system.len() }
        })
        .collect();
    let (mut nothing_kept, reference) = reference_keeping_nothing(&model, &tok, &reqs);
    for max_batch in [1, 3] {
        let mut g = Generator::new(&model, tok.clone());
        let shared: Vec<Completion> = g.run(reqs.clone(), max_batch).into_iter().map(Result::unwrap).collect();
        assert_eq!(tokens(&shared), tokens(&reference), "max_batch {max_batch}");
        let cached: Vec<usize> = shared.iter().map(|c| c.cached_prompt_tokens).collect();
        let mut want = vec![system.len(); reqs.len()];
        want[0] = 0;
        assert_eq!(cached, want, "max_batch {max_batch}");
    }
    // outside any session, and a prefix that is the whole prompt
    let mut g = Generator::new(&model, tok.clone());
    let plain: Vec<GenerationRequest> = reqs.iter().map(|r| GenerationRequest { session: None, ..r.clone() }).collect();
    let done: Vec<Completion> = g.run(plain, 2).into_iter().map(Result::unwrap).collect();
    assert_eq!(tokens(&done), tokens(&reference));
    let whole = GenerationRequest { prompt: system.clone(), params: sampling(1), session: None, shared_prefix: system.len() };
    let c = g.run(vec![whole.clone()], 1).remove(0).unwrap();
    assert_eq!(c.cached_prompt_tokens, 0, "the kept prefix is 70 tokens; this one uses 69 of them as its own chunk");
    assert_eq!(c.tokens, nothing_kept.run(vec![whole], 1).remove(0).unwrap().tokens);
}

/// The counters add up: every prompt token is prefilled or reused, every token after a
/// request's first comes from a decoding step; an engine reports the same for its thread.
#[test]
fn generation_stats_add_up() {
    let (model, tok) = (tiny_llama(Dtype::F32), byte_tokenizer());
    let reqs = requests(&tiny_prompts(), greedy_params);
    let prompt_tokens: usize = reqs.iter().map(|r| r.prompt.len()).sum();
    let check = |s: &GenerationStats, done: &[Completion]| {
        assert_eq!(s.requests as usize, reqs.len());
        assert_eq!((s.prefill_tokens + s.cached_prompt_tokens) as usize, prompt_tokens);
        assert_eq!(s.decoded_tokens as usize, done.iter().map(|c| c.tokens.len() - 1).sum::<usize>());
        assert!(s.decode_seconds > 0.0 && s.prefill_seconds > 0.0);
    };
    let mut g = Generator::new(&model, tok.clone());
    let done = g.run(reqs.clone(), 3).into_iter().map(Result::unwrap).collect::<Vec<_>>();
    check(g.stats(), &done);
    let longest = done.iter().map(|c| c.tokens.len() - 1).max().unwrap() as u64;
    assert!(g.stats().decode_steps >= longest && g.stats().mean_batch() > 1.0 && g.stats().mean_batch() <= 3.0);

    let engine = Engine::spawn(tiny_llama(Dtype::F32), tok, EngineOptions { max_batch: 4, ..EngineOptions::default() });
    let done: Vec<Completion> = reqs.iter().map(|r| engine.generate_blocking(r.clone()).unwrap()).collect();
    // a step is counted before its replies go out
    let s = engine.stats();
    check(&s, &done);
    assert_eq!(s.mean_batch(), 1.0, "one caller at a time");
}

/// A loader that fails gives its error back from `Engine::spawn_with` (no engine, no hang).
#[test]
fn engine_spawn_with_returns_the_loaders_error() {
    let result = Engine::spawn_with(EngineOptions::default(), || Err::<(CausalLm, Tokenizer), _>("model.gguf: not a GGUF file".to_string()));
    assert_eq!(result.err(), Some("model.gguf: not a GGUF file".to_string()));
}

fn smollm2() -> Option<(CausalLm, Tokenizer)> {
    let path = smollm2_gguf()?;
    swegym_lm::init_cpu_runtime();
    let file = GgufFile::open(&path).unwrap();
    Some((CausalLm::from_gguf(&file, Dtype::F32, Device::Cpu).unwrap(), Tokenizer::from_gguf(&file).unwrap()))
}

fn chat_prompt(tok: &Tokenizer, user: &str) -> Vec<u32> {
    let text = format!(
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
         <|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
    );
    tok.encode(&text, false).unwrap()
}

#[test]
fn smollm2_batched_greedy_equals_alone_and_transformers() {
    let Some((model, tok)) = smollm2() else { return };
    let chat = &fixture("smollm2_reference_logits.json")["chat_greedy"];
    let reference: Vec<u32> = serde_json::from_value(chat["generated_ids"].clone()).unwrap();
    let reference_prompt: Vec<u32> = serde_json::from_value(chat["prompt_ids"].clone()).unwrap();
    let mut prompts = vec![reference_prompt];
    for user in ["What is 2+2?", "Name three colors.", "Write a haiku about Rust.", "Explain git rebase in one sentence."] {
        prompts.push(chat_prompt(&tok, user));
    }
    let reqs = requests(&prompts, |i| SamplingParams::greedy([64, 20, 30, 40, 25][i]));
    let single = alone(&model, &tok, &reqs);
    let batched = run(&model, &tok, reqs, 3);
    assert_eq!(tokens(&batched), tokens(&single));
    assert_eq!(single[0].tokens, reference, "transformers' greedy ids");
    assert_eq!(single[0].finish_reason, FinishReason::Eos);
    assert_eq!(single[0].text.clone() + "<|im_end|>", chat["generated_text"].as_str().unwrap());
}

/// The default cache of generation on the CPU (f16 under f32 weights, `auto_kv_dtype`)
/// still gives transformers' greedy reply.
#[test]
fn smollm2_f16_kv_cache_greedy_equals_transformers() {
    let Some((mut model, tok)) = smollm2() else { return };
    assert_eq!(swegym_lm::auto_kv_dtype(Dtype::F32, Device::Cpu), Dtype::F16);
    model.set_kv_dtype(Dtype::F16);
    let chat = &fixture("smollm2_reference_logits.json")["chat_greedy"];
    let reference: Vec<u32> = serde_json::from_value(chat["generated_ids"].clone()).unwrap();
    let prompt: Vec<u32> = serde_json::from_value(chat["prompt_ids"].clone()).unwrap();
    let c = run(&model, &tok, vec![GenerationRequest::new(prompt, SamplingParams::greedy(64))], 1).remove(0);
    assert_eq!(c.tokens, reference, "transformers' greedy ids");
}

/// The logits `[reply.len(), vocab]` after `prompt` (one prefill) and after each token of
/// `reply` but the last fed back as one-row decoding steps.
fn teacher_forced(model: &CausalLm, prompt: &[u32], reply: &[u32]) -> Tensor {
    let mut cache = model.new_cache();
    let row = cache.push_row(256);
    let mut out = vec![model.prefill_row(&mut cache, row, prompt)];
    for &t in &reply[..reply.len() - 1] {
        out.push(model.decode_rows(&mut cache, &[t]).squeeze_dim(0));
    }
    Tensor::stack(&out, 0)
}

/// A q8 cache on the real model: transformers' greedy reply fed back token by token, the
/// logits at every position stay near those over an f32 cache and pick the same token.
#[test]
fn smollm2_q8_kv_cache_stays_near_the_f32_cache() {
    let Some((mut model, _tok)) = smollm2() else { return };
    let chat = &fixture("smollm2_reference_logits.json")["chat_greedy"];
    let reply: Vec<u32> = serde_json::from_value(chat["generated_ids"].clone()).unwrap();
    let prompt: Vec<u32> = serde_json::from_value(chat["prompt_ids"].clone()).unwrap();
    let mut logits_over = |kv: KvDtype| {
        model.set_kv_dtype(kv);
        teacher_forced(&model, &prompt, &reply)
    };
    let (f32_cache, q8_cache) = (logits_over(KvDtype::F32), logits_over(KvDtype::Q8));
    let err = f64::try_from((&q8_cache - &f32_cache).abs().max()).unwrap();
    let same = i64::try_from(q8_cache.argmax(-1, false).eq_tensor(&f32_cache.argmax(-1, false)).sum(tch::Kind::Int64)).unwrap();
    eprintln!("q8 cache: {same}/{} positions pick the f32 cache's token, max |Δlogit| {err:.3}", reply.len());
    assert!(err < 1.0, "q8 cache logits off by {err}");
    assert!(same as usize + 1 >= reply.len(), "{same}/{} positions agree", reply.len());
}

/// Decoding from 8-bit weights on the real model. Teacher-forced over transformers'
/// greedy reply (prefill in f32, every reply token a one-row decoding step), the logits
/// stay within 0.5 of those of the f32 weights (0.25 measured) and pick the same token but
/// for at most one near-tie; greedy replies to five chat prompts, decoded from q8 and from
/// f32, agree for their first 32 tokens on transformers' reference prompt, and where
/// another leaves f32's reply, f32's own top two logits there were within that bound
/// (measured: 4 of 5 agree for 32 tokens, the fifth leaves at its 10th).
#[test]
fn smollm2_q8_weights_stay_near_f32() {
    let Some((mut model, tok)) = smollm2() else { return };
    let chat = &fixture("smollm2_reference_logits.json")["chat_greedy"];
    let reply: Vec<u32> = serde_json::from_value(chat["generated_ids"].clone()).unwrap();
    let prompt: Vec<u32> = serde_json::from_value(chat["prompt_ids"].clone()).unwrap();
    let mut logits_with = |weights: DecodeWeights| {
        assert_eq!(model.set_decode_weights(weights), weights, "q8 decoding needs AVX2, which every CPU here has");
        teacher_forced(&model, &prompt, &reply)
    };
    let (f32_logits, q8_logits) = (logits_with(DecodeWeights::F32), logits_with(DecodeWeights::Q8));
    let decoded = q8_logits.narrow(0, 1, reply.len() as i64 - 1);
    let err = f64::try_from((&q8_logits - &f32_logits).abs().max()).unwrap();
    let spread = f64::try_from(f32_logits.std(true)).unwrap();
    let same = i64::try_from(q8_logits.argmax(-1, false).eq_tensor(&f32_logits.argmax(-1, false)).sum(tch::Kind::Int64)).unwrap();
    eprintln!("q8 weights: {same}/{} positions pick the f32 weights' token, max |Δlogit| {err:.3} (logits' spread {spread:.2}, {} decoded)", reply.len(), decoded.size()[0]);
    assert!(err < 0.5, "q8 weights' logits off by {err}");
    assert!(same as usize + 1 >= reply.len(), "{same}/{} positions agree", reply.len());

    let mut prompts = vec![prompt];
    for user in ["What is 2+2?", "Name three colors.", "Write a haiku about Rust.", "Explain git rebase in one sentence."] {
        prompts.push(chat_prompt(&tok, user));
    }
    let reqs = requests(&prompts, |_| SamplingParams { ignore_eos: true, ..SamplingParams::greedy(32) });
    let mut greedy_with = |weights: DecodeWeights| {
        model.set_decode_weights(weights);
        // each alone: steps of one row, which read the 8-bit copies (more than 4 rows would not)
        tokens(&alone(&model, &tok, &reqs))
    };
    let (f32_replies, q8_replies) = (greedy_with(DecodeWeights::F32), greedy_with(DecodeWeights::Q8));
    let common: Vec<usize> = f32_replies.iter().zip(&q8_replies).map(|(a, b)| a.iter().zip(b).take_while(|(x, y)| x == y).count()).collect();
    eprintln!("q8 weights: greedy replies agree with f32's for the first {common:?} of 32 tokens");
    assert_eq!(common[0], 32, "transformers' reference prompt");
    // where a reply leaves f32's, f32's own choice was a near-tie: its logit beats q8's
    // token by less than the bound above
    model.set_decode_weights(DecodeWeights::F32);
    for (i, &c) in common.iter().enumerate().filter(|(_, &c)| c < 32) {
        let ids: Vec<i64> = prompts[i].iter().chain(&f32_replies[i][..c]).map(|&t| i64::from(t)).collect();
        let last = model.forward(&Tensor::from_slice(&ids).unsqueeze(0)).get(0).get(ids.len() as i64 - 1);
        let margin = last.double_value(&[i64::from(f32_replies[i][c])]) - last.double_value(&[i64::from(q8_replies[i][c])]);
        eprintln!("prompt {i}: q8 leaves f32's reply at token {c}, where f32's top logit beats q8's token by {margin:.3}");
        assert!((0.0..0.5).contains(&margin), "prompt {i}: a margin of {margin} is no near-tie");
    }
}

#[test]
fn smollm2_stop_string_and_seeded_sampling() {
    let Some((model, tok)) = smollm2() else { return };
    let chat = &fixture("smollm2_reference_logits.json")["chat_greedy"];
    let prompt: Vec<u32> = serde_json::from_value(chat["prompt_ids"].clone()).unwrap();
    let params = SamplingParams { stop: vec!["def ".into()], ..SamplingParams::greedy(64) };
    let c = run(&model, &tok, vec![GenerationRequest::new(prompt.clone(), params)], 1).remove(0);
    // transformers' greedy reply starts "```python\ndef reverse_string(..."
    assert_eq!(c.text, "```python\n");
    assert_eq!(c.finish_reason, FinishReason::Stop("def ".into()));

    let sampled = |seed: u64| {
        let params = SamplingParams { temperature: 0.9, top_p: 0.95, top_k: 50, seed, ..SamplingParams::greedy(24) };
        GenerationRequest::new(prompt.clone(), params)
    };
    let a = run(&model, &tok, vec![sampled(1), sampled(2), sampled(1)], 3);
    assert_eq!(a[0].tokens, a[2].tokens);
    assert_ne!(a[0].tokens, a[1].tokens);
    assert_eq!(run(&model, &tok, vec![sampled(2)], 1)[0].tokens, a[1].tokens);
}

#[test]
fn smollm2_session_turns_match_fresh_prefill() {
    let Some((model, tok)) = smollm2() else { return };
    let first = chat_prompt(&tok, "Write a Python function that reverses a string.");
    let observation = tok.encode("<|im_end|>\n<|im_start|>user\nEXECUTION RESULT of [execute_bash]:\nOK<|im_end|>\n<|im_start|>assistant\n", false).unwrap();
    let (kept, fresh) = session_turns(&model, &tok, first, &observation, 3, SamplingParams { ignore_eos: true, ..SamplingParams::greedy(24) });
    assert_eq!(tokens(&kept), tokens(&fresh));
    assert!(kept[2].cached_prompt_tokens > kept[1].cached_prompt_tokens && kept[1].cached_prompt_tokens > 0);
}
