//! The CLIP tokenizer against ids from transformers' CLIPTokenizerFast on the
//! same vocabulary (../shared/fixtures/clip-tokenizer), from both the
//! tokenizer.json and the vocab.json + merges.txt layouts.

mod common;

use atelier::engine::tokenizer::{ClipTokenizer, MAX_TOKENS};

const END: u32 = 49407;

fn text_ids(tok: &ClipTokenizer, prompt: &str) -> Vec<u32> {
    let ids = tok.encode(prompt).unwrap();
    assert_eq!(ids.len(), MAX_TOKENS);
    let end = ids.iter().position(|&i| i == END).unwrap();
    ids[..=end].to_vec()
}

/// A tokenizer folder with only some of the fixture's files.
fn folder_with(files: &[&str], pad: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let fixture = common::shared_dir().join("fixtures/clip-tokenizer");
    for f in files {
        std::fs::copy(fixture.join(f), dir.path().join(f)).unwrap();
    }
    std::fs::write(
        dir.path().join("tokenizer_config.json"),
        format!(r#"{{"pad_token": "{pad}", "model_max_length": 77}}"#),
    )
    .unwrap();
    dir
}

const KNOWN: &[(&str, &[u32])] = &[
    (
        "a red fox in the snow, oil painting",
        &[
            49406, 320, 736, 3240, 530, 518, 2583, 267, 2870, 3086, 49407,
        ],
    ),
    (
        "Don't PANIC: 42 cats  &  dogs!!",
        &[
            49406, 847, 713, 14124, 281, 275, 273, 3989, 261, 3255, 748, 49407,
        ],
    ),
    (
        "café naïve — 東京",
        &[
            49406, 15304, 1097, 35689, 563, 2005, 48338, 21078, 361, 49407,
        ],
    ),
    ("", &[49406, 49407]),
];

#[test]
fn known_ids_from_both_layouts() {
    for files in [&["tokenizer.json"][..], &["vocab.json", "merges.txt"][..]] {
        let dir = folder_with(files, "<|endoftext|>");
        let tok = ClipTokenizer::load(dir.path()).unwrap();
        for (prompt, want) in KNOWN {
            assert_eq!(text_ids(&tok, prompt), *want, "{prompt:?} from {files:?}");
        }
    }
}

#[test]
fn long_prompts_are_truncated_to_77_with_the_end_token_kept() {
    let dir = folder_with(&["vocab.json", "merges.txt"], "<|endoftext|>");
    let tok = ClipTokenizer::load(dir.path()).unwrap();
    let long: Vec<String> = (0..60).map(|i| format!("word{i}")).collect();
    let ids = tok.encode(&long.join(" ")).unwrap();
    assert_eq!(ids.len(), 77);
    assert_eq!(&ids[..3], &[49406, 2653, 271]);
    assert_eq!(&ids[74..], &[278, 2653, 49407]);
    assert!(tok.count_text_tokens(&long.join(" ")).unwrap() > 75);
}

#[test]
fn the_pad_token_comes_from_tokenizer_config() {
    let sd1 =
        ClipTokenizer::load(folder_with(&["tokenizer.json"], "<|endoftext|>").path()).unwrap();
    assert_eq!(
        &sd1.encode("a cat").unwrap()[..6],
        &[49406, 320, 2368, 49407, 49407, 49407]
    );
    // SD 2.x pads with "!" (id 0).
    let sd2 = ClipTokenizer::load(folder_with(&["vocab.json", "merges.txt"], "!").path()).unwrap();
    let ids = sd2.encode("a cat").unwrap();
    assert_eq!(&ids[..6], &[49406, 320, 2368, 49407, 0, 0]);
    assert_eq!(ids[76], 0);
}

#[test]
fn a_folder_without_vocabulary_is_a_clear_error() {
    let dir = folder_with(&["vocab.json"], "!");
    let err = ClipTokenizer::load(dir.path()).err().unwrap().to_string();
    assert!(err.contains("merges.txt"), "{err}");
}
