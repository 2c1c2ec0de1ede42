//! Marker-based masking, as Unsloth's `train_on_responses_only`: in the rendered text, training
//! runs from the end of each response marker to the start of the next instruction marker (or
//! the end of the text). Works with any template, including ones that re-render earlier turns.

use super::mask::Markers;

/// The trained `[start, end)` character ranges of `text`, in order; `None` when the response
/// marker never occurs. A response marker inside a trained range trains, as in Unsloth (the
/// search resumes at the next instruction marker).
pub(crate) fn marker_ranges(text: &str, markers: &Markers) -> Option<Vec<(usize, usize)>> {
    let (instruction, response) = (markers.instruction_part.as_str(), markers.response_part.as_str());
    if response.is_empty() {
        return None;
    }
    let mut ranges = Vec::new();
    let mut at = 0;
    while let Some(found) = text[at..].find(response) {
        let start = at + found + response.len();
        let end = match instruction.is_empty() {
            true => None,
            false => text[start..].find(instruction).map(|i| start + i),
        }
        .unwrap_or(text.len());
        ranges.push((start, end));
        if end == text.len() {
            break;
        }
        at = end;
    }
    if ranges.is_empty() {
        return None;
    }
    Some(to_char_ranges(text, &ranges))
}

/// Byte ranges (ascending, on char boundaries) to character ranges, in one pass.
fn to_char_ranges(text: &str, ranges: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut bytes: Vec<usize> = ranges.iter().flat_map(|&(s, e)| [s, e]).collect();
    bytes.sort_unstable();
    let mut chars = Vec::with_capacity(bytes.len());
    let (mut byte, mut count) = (0, 0);
    for b in bytes {
        count += text[byte..b].chars().count();
        byte = b;
        chars.push(count);
    }
    chars.chunks(2).map(|c| (c[0], c[1])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chatml() -> Markers {
        Markers { instruction_part: "<u>".into(), response_part: "<a>".into() }
    }

    fn pieces(text: &str, m: &Markers) -> Option<Vec<String>> {
        let chars: Vec<char> = text.chars().collect();
        marker_ranges(text, m).map(|r| r.iter().map(|&(s, e)| chars[s..e].iter().collect()).collect())
    }

    #[test]
    fn each_response_trains_up_to_the_next_instruction_or_the_end() {
        let text = "<s>sys<u>q1<a>r1.<u>q2<a>r2.";
        assert_eq!(pieces(text, &chatml()).unwrap(), vec!["r1.", "r2."]);
        assert_eq!(pieces("<u>q<a>r<a>s<u>t", &chatml()).unwrap(), vec!["r<a>s"]);
        assert_eq!(pieces("<u>q<a><u>", &chatml()).unwrap(), vec![""]);
    }

    #[test]
    fn offsets_count_characters_not_bytes() {
        assert_eq!(marker_ranges("é<u>ü<a>ñø<u>x", &chatml()), Some(vec![(8, 10)]));
    }

    #[test]
    fn no_response_marker_is_none() {
        assert_eq!(marker_ranges("<u>q only", &chatml()), None);
        assert_eq!(marker_ranges("<a>x", &Markers { instruction_part: "<u>".into(), response_part: String::new() }), None);
    }
}
