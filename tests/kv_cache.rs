//! KV-cached generation equals full recomputation token for token, and the cache shrinks
//! with the number of key/value heads.

mod common;

use common::{config as model_config, gpt_mini, llama_style};
use dfdx::prelude::*;
use gptlab::model::{AttentionKind, Gpt, KvCache, ModelConfig, ModelOptions, Pass, Position};
use gptlab::sample::{SampleOptions, generate, generate_uncached};

fn config(position: Position, n_kv_head: usize) -> ModelConfig {
    let arch = ModelOptions {
        dropout: 0.1,
        ..common::small(24, 6, n_kv_head, position)
    };
    model_config(13, 10, arch)
}

#[test]
fn cached_generation_equals_recomputation_token_for_token() {
    let dev = Cpu::default();
    for position in [Position::Absolute, Position::Rope, Position::None, Position::Alibi] {
        for kv in [6, 3, 1] {
            let mut cfg = config(position, kv);
            if kv == 3 {
                cfg.arch.attention = AttentionKind::GroupedSum;
            }
            if kv == 1 {
                cfg.arch = llama_style(cfg.arch, 6);
            }
            let model = Gpt::new(&dev, &cfg, 17);
            for (prompt, top_k) in [(vec![1usize, 4, 2], 0), (vec![5], 3), (vec![0; 12], 1)] {
                // 25 new tokens from a block of 10: the window slides past the block size.
                let opts = SampleOptions {
                    max_new_tokens: 25,
                    temperature: 1.0,
                    top_k,
                    seed: 4,
                };
                let cached = generate(&model, &prompt, &opts);
                let full = generate_uncached(&model, &prompt, &opts);
                assert_eq!(cached, full, "{position} kv={kv} prompt={prompt:?} top_k={top_k}");
            }
        }
    }
}

#[test]
fn cached_logits_match_the_full_forward_and_the_cache_shrinks_with_kv_heads() {
    let dev = Cpu::default();
    let model = Gpt::new(&dev, &config(Position::Rope, 2), 3);
    let tokens = [3usize, 1, 4, 1, 5, 9, 2, 6];
    let full = model.eval_logits(&tokens, 1, tokens.len()).as_vec();
    let mut cache = KvCache::new(2);
    for (i, &tok) in tokens.iter().enumerate() {
        let logits = model.forward(&[tok], 1, 1, NoneTape, Pass::Decode(&mut cache)).as_vec();
        for (a, b) in logits.iter().zip(&full[i * 13..(i + 1) * 13]) {
            assert!((a - b).abs() < 1e-5, "position {i}: {a} vs {b}");
        }
    }
    assert_eq!(cache.bytes(), tokens.len() * model.kv_bytes_per_token());
    // gpt-mini: MHA keeps 6 key/value heads per layer, MQA one.
    let mini = |kv| Gpt::new(&dev, &gpt_mini(Position::Rope, 128).with(|a| a.n_kv_head = Some(kv)), 0);
    assert_eq!(mini(6).kv_bytes_per_token(), 2 * 6 * 192 * 4);
    assert_eq!(mini(6).kv_bytes_per_token(), 6 * mini(1).kv_bytes_per_token());
}
