//! The text stream of generated ids: pieces concatenate to the decoded text, never split a
//! character, and a stop string ends the text before it (a real tokenizer, Qwen2.5's).

use std::path::PathBuf;

use sft_data::tokens::TextTokenizer;
use sft_infer::generate::TextStream;

fn tokenizer() -> TextTokenizer {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../assets/tokenizers/qwen2_5");
    TextTokenizer::from_dir(&dir).expect("assets/tokenizers/qwen2_5 (run scripts/fetch-assets.sh)")
}

/// Pushes every id of `text`; returns (the pieces, whether a stop string ended it, the text).
fn stream(tok: &TextTokenizer, text: &str, stop: &[String]) -> (Vec<String>, bool, String) {
    let ids = tok.encode(text, &[]).expect("encode").input_ids;
    let mut s = TextStream::new(tok, stop);
    let mut pieces = vec![];
    let mut stopped = false;
    for id in ids {
        let (piece, done) = s.push(id).expect("push");
        pieces.push(piece);
        if done {
            stopped = true;
            break;
        }
    }
    pieces.push(s.finish());
    (pieces, stopped, s.text().to_string())
}

#[test]
fn pieces_add_up_to_the_text_and_stop_strings_cut_it() {
    let tok = tokenizer();
    let text = "Réponse: l'été — 東京 🎉 done.\nUser: next question";
    let (pieces, stopped, whole) = stream(&tok, text, &[]);
    assert!(!stopped);
    assert_eq!(whole, text);
    assert_eq!(pieces.concat(), text);
    assert!(pieces.iter().all(|p| !p.contains('\u{FFFD}')), "{pieces:?}");
    let stop = vec!["\nUser:".to_string()];
    let (pieces, stopped, whole) = stream(&tok, text, &stop);
    assert!(stopped);
    assert_eq!(whole, "Réponse: l'été — 東京 🎉 done.");
    assert_eq!(pieces.concat(), whole);
    // A stop string that never completes: its start is held back, then released at the end.
    let (pieces, stopped, whole) = stream(&tok, "the end\nUs", &stop);
    assert!(!stopped);
    assert_eq!((pieces.concat(), whole), ("the end\nUs".to_string(), "the end\nUs".to_string()));
}
