//! The parameter calculator against published totals of real models and against the
//! instantiated dfdx model for many random gptlab configs.

use assert_cmd::Command;
use dfdx::prelude::*;
use gptlab::model::{AttentionKind, Gpt, HasParams, MlpKind, ModelConfig, ModelOptions, NormKind, Position};
use gptlab::params::Arch;
use rand::{Rng, SeedableRng};

fn total(config: &str) -> u64 {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/configs")
        .join(config);
    Arch::from_hf_config(&path).unwrap().breakdown().total
}

#[test]
fn published_totals_of_real_models() {
    assert_eq!(total("llama-2-7b.json"), 6_738_415_616);
    assert_eq!(total("mistral-7b.json"), 7_241_732_096);
    assert_eq!(total("llama-3-8b.json"), 8_030_261_248);
    assert_eq!(total("gpt2.json"), 124_439_808);
    // `sum(p.numel() for p in model.parameters())` of the Hugging Face models (tied
    // embeddings counted once). Qwen2 has biases on q, k and v; Qwen3 RMS-normalises each
    // head's queries and keys; Gemma 2 has four norms per block.
    assert_eq!(total("qwen2-0.5b.json"), 494_032_768);
    assert_eq!(total("qwen3-0.6b.json"), 596_049_920);
    assert_eq!(total("gemma-2b.json"), 2_506_172_416);
    assert_eq!(total("gemma-2-2b.json"), 2_614_341_888);
}

/// The total `gptlab params --json` prints for a config.json of `json`.
fn total_of(json: &str) -> u64 {
    let out = params_of(json, &["--json"]).success();
    let v: serde_json::Value = serde_json::from_slice(&out.get_output().stdout).unwrap();
    v[0]["params"]["total"].as_u64().unwrap()
}

#[test]
fn null_fields_mean_the_default_as_in_transformers() {
    // Configs saved by transformers write unset options as null: GPT-2's `n_inner` (4 ×
    // n_embd), Mistral's and Granite's `head_dim` (hidden_size / heads), `num_key_value_heads`
    // (one per head).
    let gpt2 = r#"{"model_type": "gpt2", "n_embd": 768, "n_head": 12, "n_layer": 12, "n_positions": 1024,
        "vocab_size": 50257, "n_inner": null, "activation_function": "gelu_new", "summary_activation": null}"#;
    assert_eq!(total_of(gpt2), 124_439_808);
    let mistral = r#"{"model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": 8, "head_dim": null,
        "sliding_window": null, "vocab_size": 32000, "tie_word_embeddings": false}"#;
    assert_eq!(total_of(mistral), 7_241_732_096);
    let llama_mha = r#"{"model_type": "llama", "hidden_size": 4096, "intermediate_size": 11008,
        "num_attention_heads": 32, "num_hidden_layers": 32, "num_key_value_heads": null, "vocab_size": 32000}"#;
    assert_eq!(total_of(llama_mha), 6_738_415_616);
    // A null where a number is needed is still an error naming it.
    params_of(&llama_mha.replace("\"vocab_size\": 32000", "\"vocab_size\": null"), &[])
        .code(2)
        .stderr(predicates::str::contains("`vocab_size` is missing (or null)"));
}

#[test]
fn analytic_counts_equal_instantiated_models_for_random_configs() {
    let dev = Cpu::default();
    let mut r = rand_chacha::ChaCha8Rng::seed_from_u64(42);
    for _ in 0..60 {
        let n_kv_head = [1, 2, 3, 4][r.gen_range(0..4)];
        let n_head = n_kv_head * r.gen_range(1..4);
        let head_dim = 2 * r.gen_range(1..5);
        let config = ModelConfig {
            vocab_size: r.gen_range(2..80),
            block_size: r.gen_range(1..40),
            arch: ModelOptions {
                n_layer: r.gen_range(1..4),
                n_embd: n_head * head_dim,
                n_head,
                n_kv_head: Some(n_kv_head),
                position: [Position::Absolute, Position::Rope, Position::None, Position::Alibi][r.gen_range(0..4)],
                dropout: 0.0,
                rope_base: 10_000.0,
                attention: [AttentionKind::Standard, AttentionKind::GroupedSum][r.gen_range(0..2)],
                norm: [NormKind::LayerNorm, NormKind::RmsNorm][r.gen_range(0..2)],
                mlp: [MlpKind::Gelu, MlpKind::Swiglu][r.gen_range(0..2)],
                mlp_hidden: [None, Some(r.gen_range(1..50))][r.gen_range(0..2)],
                mlp_multiple_of: [1, 8, 256][r.gen_range(0..3)],
                bias: r.gen_range(0..2) == 1,
                tie_embeddings: r.gen_range(0..2) == 1,
                qk_norm: r.gen_range(0..2) == 1,
                head_dim: [None, Some(2 * r.gen_range(1..5))][r.gen_range(0..2)],
            },
        };
        let built = Gpt::new(&dev, &config, 1).num_params() as u64;
        assert_eq!(Arch::from_model(&config).breakdown().total, built, "{config:?}");
    }
    // gpt-mini with absolute positions at block 128.
    let mini = ModelConfig {
        vocab_size: 65,
        block_size: 128,
        arch: ModelOptions {
            n_layer: 6,
            n_embd: 192,
            n_head: 6,
            n_kv_head: Some(6),
            position: Position::Absolute,
            dropout: 0.1,
            rope_base: 10_000.0,
            attention: AttentionKind::Standard,
            ..ModelOptions::default()
        },
    };
    assert_eq!(Arch::from_model(&mini).breakdown().total, 2_719_104);
    // ALiBi has no parameters: gpt-mini without its 128 × 192 position table.
    let alibi = mini.with(|a| a.position = Position::Alibi);
    assert_eq!(Arch::from_model(&alibi).breakdown().total, 2_719_104 - 128 * 192);
    assert_eq!(Gpt::new(&Cpu::default(), &alibi, 0).num_params(), 2_719_104 - 128 * 192);
}

#[test]
fn the_cli_prints_tables_and_json_for_specs_and_hf_configs() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = Command::cargo_bin("gptlab")
        .unwrap()
        .current_dir(root)
        .args([
            "params",
            "tests/configs/llama-2-7b.json",
            "--json",
            "--context",
            "4096",
            "--batch",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v[0]["params"]["total"], 6_738_415_616u64);
    assert_eq!(v[0]["memory_bytes"]["weights_bf16"], 2 * 6_738_415_616u64);
    // 2 (K, V) · 32 layers · 32 heads · 128 dims · 2 bytes = 512 KiB a token.
    assert_eq!(v[0]["memory_bytes"]["kv_cache_per_token_bf16"], 524_288u64);
    assert_eq!(v[0]["memory_bytes"]["kv_cache_bf16"], 524_288u64 * 4096 * 2);
    let table = Command::cargo_bin("gptlab")
        .unwrap()
        .current_dir(root)
        .args(["params", "experiments/rope_vs_abs.toml"])
        .output()
        .unwrap();
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains("2743680") && table.contains("2694528"), "{table}");
    Command::cargo_bin("gptlab")
        .unwrap()
        .current_dir(root)
        .args(["params", "Cargo.json"])
        .assert()
        .code(2);
}

/// `gptlab params` on a config.json with `json` as its text, from a temporary folder.
fn params_of(json: &str, extra: &[&str]) -> assert_cmd::assert::Assert {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("config.json");
    std::fs::write(&path, json).unwrap();
    Command::cargo_bin("gptlab")
        .unwrap()
        .arg("params")
        .arg(&path)
        .args(extra)
        .assert()
}

#[test]
fn configs_gptlab_cannot_count_are_refused_naming_why() {
    let llama = |fields: &str| {
        format!(
            r#"{{"model_type": "llama", "vocab_size": 32000, "num_hidden_layers": 2, "intermediate_size": 11008, {fields}}}"#
        )
    };
    let bert = r#"{"model_type": "bert", "vocab_size": 30522, "hidden_size": 768, "num_hidden_layers": 12,
        "num_attention_heads": 12, "intermediate_size": 3072}"#;
    let mixtral = r#"{"model_type": "mixtral", "vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32,
        "num_attention_heads": 32, "num_key_value_heads": 8, "intermediate_size": 14336, "num_local_experts": 8}"#;
    let no_family = r#"{"vocab_size": 32000, "hidden_size": 4096, "num_hidden_layers": 32, "num_attention_heads": 32}"#;
    let cases: Vec<(String, &str)> = vec![
        (bert.into(), "`bert` is not a family gptlab knows"),
        (mixtral.into(), "Mixture-of-Experts"),
        (no_family.into(), "`model_type` is missing"),
        (
            llama(r#""hidden_size": 768, "num_attention_heads": 12, "num_key_value_heads": 0"#),
            "`num_key_value_heads` must be at least 1",
        ),
        (
            llama(r#""hidden_size": 768, "num_attention_heads": 12, "num_key_value_heads": 5"#),
            "must be a multiple of `num_key_value_heads`",
        ),
        (
            llama(r#""hidden_size": 770, "num_attention_heads": 12"#),
            "must be divisible by `num_attention_heads`",
        ),
        (
            llama(r#""hidden_size": -768, "num_attention_heads": 12"#),
            "`hidden_size` must be a whole number, not -768",
        ),
        (
            llama(r#""hidden_size": "768", "num_attention_heads": 12"#),
            "`hidden_size` must be a whole number",
        ),
        (
            llama(r#""hidden_size": 4294967296, "num_attention_heads": 1"#),
            "too large to count",
        ),
        (
            llama(r#""hidden_size": 18446744073709551615, "num_attention_heads": 1"#),
            "too large to count",
        ),
    ];
    for (json, words) in cases {
        params_of(&json, &[]).code(2).stderr(predicates::str::contains(words));
    }
    // A context × batch that overflows is an error, not "0.000 GB".
    let fine = llama(r#""hidden_size": 768, "num_attention_heads": 12"#);
    params_of(&fine, &[]).success();
    params_of(&fine, &["--context", "18446744073709551615", "--batch", "2"])
        .code(2)
        .stderr(predicates::str::contains("overflow"));
}
