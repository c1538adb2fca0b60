//! KV-cached generation equals full recomputation token for token, and the cache shrinks
//! with the number of key/value heads.

use dfdx::prelude::*;
use gptlab::model::{BlockStyle, Dropout, Gpt, KvCache, MlpKind, ModelConfig, NormKind, Position};
use gptlab::sample::{SampleOptions, generate, generate_uncached};

fn config(position: Position, n_kv_head: usize) -> ModelConfig {
    ModelConfig {
        vocab_size: 13,
        block_size: 10,
        n_layer: 2,
        n_embd: 24,
        n_head: 6,
        n_kv_head,
        position,
        dropout: 0.1,
        rope_base: 10_000.0,
        attention: Default::default(),
        block: Default::default(),
    }
}

#[test]
fn cached_generation_equals_recomputation_token_for_token() {
    let dev = Cpu::default();
    for position in [Position::Absolute, Position::Rope, Position::None] {
        for kv in [6, 3, 1] {
            let mut cfg = config(position, kv);
            if kv == 3 {
                cfg.attention = gptlab::model::AttentionKind::GroupedSum;
            }
            if kv == 1 {
                cfg.block = BlockStyle {
                    norm: NormKind::RmsNorm,
                    mlp: MlpKind::Swiglu,
                    mlp_hidden: None,
                    mlp_multiple_of: 8,
                    bias: false,
                    tie_embeddings: true,
                    qk_norm: true,
                    head_dim: Some(6),
                };
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
    let full = model
        .forward(&tokens, 1, tokens.len(), NoneTape, &mut Dropout::eval())
        .as_vec();
    let mut cache = KvCache::new(2);
    for (i, &tok) in tokens.iter().enumerate() {
        let logits = model.forward_cached(tok, &mut cache);
        for (a, b) in logits.iter().zip(&full[i * 13..(i + 1) * 13]) {
            assert!((a - b).abs() < 1e-5, "position {i}: {a} vs {b}");
        }
    }
    assert_eq!(cache.bytes(), tokens.len() * model.kv_bytes_per_token());
    // gpt-mini: MHA keeps 6 key/value heads per layer, MQA one.
    let mini = |kv| {
        Gpt::new(
            &dev,
            &ModelConfig {
                vocab_size: 65,
                block_size: 128,
                n_layer: 6,
                n_embd: 192,
                n_head: 6,
                n_kv_head: kv,
                position: Position::Rope,
                dropout: 0.1,
                rope_base: 10_000.0,
                attention: Default::default(),
                block: Default::default(),
            },
            0,
        )
    };
    assert_eq!(mini(6).kv_bytes_per_token(), 2 * 6 * 192 * 4);
    assert_eq!(mini(6).kv_bytes_per_token(), 6 * mini(1).kv_bytes_per_token());
}
