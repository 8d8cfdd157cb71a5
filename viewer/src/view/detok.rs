//! Token text: what each sampled id reads as.
//!
//! Text the trace captured (capture level `text`) wins; otherwise the ids are
//! decoded offline with the model's `tokenizer.json` (from `--tokenizer`, else
//! the model path the engine recorded, which may name a directory of the
//! recording machine — then the viewer says so and shows ids). Special tokens
//! never render as their (often empty) text: they show as ⟨bos⟩, ⟨eos⟩, … so a
//! BOS inside an answer is obvious; the raw id stays in the detail panel.

use anyhow::{Context, Result};
use probe_core::event::SpecialTokens;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use toktrace_analyzer::data::TraceData;

/// What one token reads as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenText {
    /// Ordinary text (may be empty: the first bytes of a multi-byte character,
    /// which the next token completes).
    Text(String),
    /// A special token, by its short name (`bos`, `eos`, `im_end`, …).
    Special(String),
    /// Only the id is known (no tokenizer, no captured text).
    Id(u32),
    /// No id and no text were captured.
    Unknown,
}

impl TokenText {
    /// How it shows in one line: specials as ⟨name⟩, control characters escaped.
    pub fn display(&self) -> String {
        match self {
            TokenText::Text(t) => visible(t),
            TokenText::Special(name) => format!("⟨{name}⟩"),
            TokenText::Id(id) => format!("#{id}"),
            TokenText::Unknown => "·".to_string(),
        }
    }
}

/// Newlines, tabs and other control characters as escapes, so one token is
/// one line and whitespace-only tokens are still seen.
pub fn visible(text: &str) -> String {
    text.chars()
        .map(|c| match c {
            '\n' => "\\n".to_string(),
            '\r' => "\\r".to_string(),
            '\t' => "\\t".to_string(),
            c if c.is_control() => c.escape_unicode().to_string(),
            c => c.to_string(),
        })
        .collect()
}

/// Turns ids into text, with or without a tokenizer.
pub struct Detokenizer {
    tokenizer: Option<tokenizers::Tokenizer>,
    /// Special ids and their short names (from the trace, else the tokenizer).
    special: HashMap<u32, String>,
    /// Where the text comes from, or why there is none (for the status line).
    pub note: String,
}

impl Detokenizer {
    /// Pick the tokenizer: `explicit` (a tokenizer.json or a directory holding
    /// one) must load; the model path recorded in the trace is tried quietly.
    pub fn resolve(explicit: Option<&Path>, data: &TraceData) -> Result<Detokenizer> {
        let special = special_names(data);
        if let Some(path) = explicit {
            let file = tokenizer_file(path);
            let tokenizer = load_tokenizer(&file)
                .with_context(|| format!("loading the tokenizer {}", file.display()))?;
            return Ok(Detokenizer::with(
                Some(tokenizer),
                special,
                format!("text: {}", file.display()),
            ));
        }
        let recorded = data
            .processes
            .iter()
            .filter_map(|p| p.info.as_ref()?.model_path.clone())
            .next();
        let note;
        let mut tokenizer = None;
        match recorded {
            Some(model) => {
                let file = tokenizer_file(Path::new(&model));
                match load_tokenizer(&file) {
                    Ok(t) => {
                        tokenizer = Some(t);
                        note = format!("text: {}", file.display());
                    }
                    Err(_) => {
                        note = format!(
                            "ids shown: no tokenizer.json at the recorded model path {model} (use --tokenizer PATH)"
                        )
                    }
                }
            }
            None => {
                note = "ids shown: the trace records no model path (use --tokenizer PATH)".into()
            }
        }
        Ok(Detokenizer::with(tokenizer, special, note))
    }

    /// A detokenizer from parts (tests).
    pub fn with(
        tokenizer: Option<tokenizers::Tokenizer>,
        mut special: HashMap<u32, String>,
        note: String,
    ) -> Detokenizer {
        if let Some(t) = &tokenizer {
            for (id, added) in t.get_added_tokens_decoder() {
                if added.special {
                    special
                        .entry(id)
                        .or_insert_with(|| short_name(&added.content));
                }
            }
        }
        Detokenizer {
            tokenizer,
            special,
            note,
        }
    }

    /// Whether `id` is a special token.
    pub fn is_special(&self, id: u32) -> bool {
        self.special.contains_key(&id)
    }

    /// Whether ids can be turned into text.
    pub fn has_tokenizer(&self) -> bool {
        self.tokenizer.is_some()
    }

    /// The text of each token of one answer: `ids` and `captured` are aligned
    /// (either may be shorter or hold gaps).
    pub fn texts(&self, ids: &[Option<u32>], captured: &[Option<String>]) -> Vec<TokenText> {
        let n = ids.len().max(captured.len());
        // Decoding the answer as a stream gives each token exactly the text
        // it adds, multi-byte characters split over tokens included.
        let mut stream = self.tokenizer.as_ref().map(|t| t.decode_stream(false));
        (0..n)
            .map(|i| {
                let id = ids.get(i).copied().flatten();
                let streamed = match (&mut stream, id) {
                    (Some(s), Some(id)) => s.step(id).ok().map(Option::unwrap_or_default),
                    _ => None,
                };
                if let Some(name) = id.and_then(|id| self.special.get(&id)) {
                    return TokenText::Special(name.clone());
                }
                if let Some(text) = captured.get(i).cloned().flatten() {
                    return TokenText::Text(text);
                }
                match (streamed, id) {
                    (Some(text), _) => TokenText::Text(text),
                    (None, Some(id)) => TokenText::Id(id),
                    (None, None) => TokenText::Unknown,
                }
            })
            .collect()
    }

    /// The text of a single id (top-K candidates), without context.
    pub fn one(&self, id: u32) -> TokenText {
        if let Some(name) = self.special.get(&id) {
            return TokenText::Special(name.clone());
        }
        match self
            .tokenizer
            .as_ref()
            .and_then(|t| t.decode(&[id], false).ok())
        {
            Some(text) => TokenText::Text(text),
            None => TokenText::Id(id),
        }
    }
}

/// `PATH` itself when it is a file, else `PATH/tokenizer.json`.
fn tokenizer_file(path: &Path) -> PathBuf {
    if path.is_dir() {
        path.join("tokenizer.json")
    } else {
        path.to_path_buf()
    }
}

fn load_tokenizer(file: &Path) -> Result<tokenizers::Tokenizer> {
    // tokenizers' error type is a boxed dyn Error without Sync; keep its text.
    tokenizers::Tokenizer::from_file(file).map_err(|e| anyhow::anyhow!("{e}"))
}

/// `<s>` → `s`, `<|im_end|>` → `im_end`, `[CLS]` → `CLS`.
fn short_name(content: &str) -> String {
    let trimmed = content.trim_matches(|c| matches!(c, '<' | '>' | '|' | '[' | ']'));
    if trimmed.is_empty() {
        content.to_string()
    } else {
        trimmed.to_string()
    }
}

/// Special ids the engines recorded, named by role where it is known.
fn special_names(data: &TraceData) -> HashMap<u32, String> {
    let mut names = HashMap::new();
    for p in &data.processes {
        if let Some(info) = &p.info {
            add_special(&info.special_tokens, &mut names);
        }
    }
    names
}

fn add_special(s: &SpecialTokens, names: &mut HashMap<u32, String>) {
    if let Some(b) = s.bos {
        names.insert(b, "bos".into());
    }
    for e in &s.eos {
        names.insert(*e, "eos".into());
    }
    if let Some(p) = s.pad {
        names.entry(p).or_insert_with(|| "pad".into());
    }
    for (id, text) in &s.all {
        names.entry(*id).or_insert_with(|| short_name(text));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(visible("a\nb\t"), "a\\nb\\t");
        assert_eq!(TokenText::Special("bos".into()).display(), "⟨bos⟩");
    }

    #[test]
    fn names_are_shortened() {
        assert_eq!(short_name("<|im_end|>"), "im_end");
        assert_eq!(short_name("<s>"), "s");
        assert_eq!(short_name("<>"), "<>");
    }

    #[test]
    fn the_fixture_tokenizer_decodes_and_survives_bad_ids() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/tiny-llama");
        let tokenizer = load_tokenizer(&tokenizer_file(&path)).expect("fixture tokenizer");
        let d = Detokenizer::with(Some(tokenizer), HashMap::new(), String::new());
        // Special tokens come from tokenizer.json when the trace names none.
        assert!(d.is_special(0));
        let texts = d.texts(&[Some(262), Some(0), Some(u32::MAX), Some(270)], &[]);
        assert_eq!(texts[1], TokenText::Special("s".into()));
        assert!(
            matches!(&texts[0], TokenText::Text(t) if !t.is_empty()),
            "{texts:?}"
        );
        assert_eq!(texts.len(), 4);
        assert!(matches!(
            d.one(u32::MAX),
            TokenText::Text(_) | TokenText::Id(_)
        ));
    }

    #[test]
    fn without_a_tokenizer_ids_show() {
        let mut special = HashMap::new();
        special.insert(0, "bos".to_string());
        let d = Detokenizer::with(None, special, String::new());
        let texts = d.texts(&[Some(5), Some(0), None], &[None, None, Some("x".into())]);
        assert_eq!(
            texts,
            vec![
                TokenText::Id(5),
                TokenText::Special("bos".into()),
                TokenText::Text("x".into())
            ]
        );
    }
}
