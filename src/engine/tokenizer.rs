//! The CLIP tokenizer as Stable Diffusion repositories ship it: `tokenizer.json`
//! when present, otherwise `vocab.json` + `merges.txt` assembled into the same
//! pipeline. Prompts become exactly 77 ids: start, text (truncated), end, pad.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use tokenizers::models::bpe::BPE;
use tokenizers::normalizers::{Lowercase, Replace, Sequence as NormalizerSequence, NFC};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::sequence::Sequence as PreTokenizerSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, SplitDelimiterBehavior, Tokenizer};

/// Stable Diffusion's text encoders see exactly this many tokens.
pub const MAX_TOKENS: usize = 77;

const START: &str = "<|startoftext|>";
const END: &str = "<|endoftext|>";
/// CLIP's word pattern (special tokens, contractions, letters, digits, other).
const CLIP_PATTERN: &str =
    r"<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+";

pub struct ClipTokenizer {
    tokenizer: Tokenizer,
    start_id: u32,
    end_id: u32,
    pad_id: u32,
}

impl ClipTokenizer {
    /// Loads the tokenizer folder of a model (`<model>/tokenizer`).
    pub fn load(dir: &Path) -> Result<Self> {
        let json = dir.join("tokenizer.json");
        let mut tokenizer = if json.is_file() {
            Tokenizer::from_file(&json)
                .map_err(|e| anyhow!("cannot load {}: {e}", json.display()))?
        } else {
            from_vocab_and_merges(dir)?
        };
        // Encode the text alone; the special tokens are placed by `encode`.
        tokenizer.with_post_processor(None::<tokenizers::processors::PostProcessorWrapper>);
        tokenizer
            .with_truncation(None)
            .map_err(|e| anyhow!("{e}"))?;
        tokenizer.with_padding(None);

        let pad_token = pad_token(dir)?;
        let id = |token: &str| {
            tokenizer.token_to_id(token).with_context(|| {
                format!("the tokenizer in {} has no token {token:?}", dir.display())
            })
        };
        Ok(Self {
            start_id: id(START)?,
            end_id: id(END)?,
            pad_id: id(&pad_token)?,
            tokenizer,
        })
    }

    /// A tokenizer without files for random-weight benchmarks: every word is
    /// one unknown token, framed and padded as CLIP frames them. Its ids mean
    /// nothing; they only give the text encoder real work of the real shape.
    pub fn for_benchmarks() -> Result<Self> {
        use tokenizers::models::wordlevel::WordLevel;
        use tokenizers::pre_tokenizers::whitespace::Whitespace;
        let (start_id, end_id, unknown) = (49406, 49407, "!");
        let vocab = [
            (unknown.to_string(), 0),
            (START.into(), start_id),
            (END.into(), end_id),
        ];
        let model = WordLevel::builder()
            .vocab(vocab.into_iter().collect())
            .unk_token(unknown.into())
            .build()
            .map_err(|e| anyhow!("{e}"))?;
        let mut tokenizer = Tokenizer::new(model);
        tokenizer.with_pre_tokenizer(Some(Whitespace {}));
        Ok(Self {
            tokenizer,
            start_id,
            end_id,
            pad_id: end_id,
        })
    }

    /// The end-of-text id (where pooled text embeddings are read).
    pub fn end_id(&self) -> u32 {
        self.end_id
    }

    /// The 77 ids the text encoder sees for `prompt`.
    pub fn encode(&self, prompt: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?;
        let text = encoding.get_ids();
        let kept = text.len().min(MAX_TOKENS - 2);
        let mut ids = Vec::with_capacity(MAX_TOKENS);
        ids.push(self.start_id);
        ids.extend_from_slice(&text[..kept]);
        ids.push(self.end_id);
        ids.resize(MAX_TOKENS, self.pad_id);
        Ok(ids)
    }

    /// How many prompt tokens fit; the rest are dropped (as diffusers does).
    pub fn count_text_tokens(&self, prompt: &str) -> Result<usize> {
        Ok(self
            .tokenizer
            .encode(prompt, false)
            .map_err(|e| anyhow!("cannot tokenize the prompt: {e}"))?
            .get_ids()
            .len())
    }
}

/// The pad token from `tokenizer_config.json`: `<|endoftext|>` for SD 1.x,
/// `!` for SD 2.x. Missing config means CLIP's default.
fn pad_token(dir: &Path) -> Result<String> {
    let path = dir.join("tokenizer_config.json");
    if !path.is_file() {
        return Ok(END.to_string());
    }
    let raw: serde_json::Value = super::config::read_json(&path)?;
    Ok(match raw.get("pad_token") {
        Some(serde_json::Value::String(s)) => s.clone(),
        // Older configs store an AddedToken object.
        Some(serde_json::Value::Object(o)) => o
            .get("content")
            .and_then(|c| c.as_str())
            .unwrap_or(END)
            .to_string(),
        _ => END.to_string(),
    })
}

fn from_vocab_and_merges(dir: &Path) -> Result<Tokenizer> {
    let vocab = dir.join("vocab.json");
    let merges = dir.join("merges.txt");
    for f in [&vocab, &merges] {
        if !f.is_file() {
            bail!(
                "the tokenizer folder {} has neither tokenizer.json nor {}",
                dir.display(),
                f.file_name().unwrap_or_default().to_string_lossy()
            );
        }
    }
    let bpe = BPE::from_file(&vocab.to_string_lossy(), &merges.to_string_lossy())
        .unk_token(END.to_string())
        .end_of_word_suffix("</w>".to_string())
        .build()
        .map_err(|e| {
            anyhow!(
                "cannot read {} / {}: {e}",
                vocab.display(),
                merges.display()
            )
        })?;
    let mut tokenizer = Tokenizer::new(bpe);
    let whitespace = Replace::new(
        tokenizers::normalizers::replace::ReplacePattern::Regex(r"\s+".into()),
        " ",
    )
    .map_err(|e| anyhow!("{e}"))?;
    tokenizer.with_normalizer(Some(NormalizerSequence::new(vec![
        NFC.into(),
        whitespace.into(),
        Lowercase.into(),
    ])));
    let split = Split::new(
        SplitPattern::Regex(CLIP_PATTERN.into()),
        SplitDelimiterBehavior::Removed,
        true,
    )
    .map_err(|e| anyhow!("{e}"))?;
    tokenizer.with_pre_tokenizer(Some(PreTokenizerSequence::new(vec![
        split.into(),
        ByteLevel::new(false, true, true).into(),
    ])));
    tokenizer.add_special_tokens(&[AddedToken::from(START, true), AddedToken::from(END, true)]);
    Ok(tokenizer)
}
