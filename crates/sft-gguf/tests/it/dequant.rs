//! Every tensor type the issue names, dequantized through candle, against gguf-py's
//! dequantization of the same blocks (`dequant.gguf`: `<TYPE>` and `<TYPE>.expected`).

use sft_gguf::file::GgufFile;

use super::common::fixture;

#[test]
fn every_type_dequantizes_as_gguf_py_does() {
    let mut file = GgufFile::open(&fixture("dequant.gguf")).expect("open");
    let types = ["F32", "F16", "BF16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K", "Q5_K", "Q6_K"];
    for t in types {
        let entry = file.entries().iter().find(|e| e.name == t).unwrap_or_else(|| panic!("{t} in fixture")).clone();
        assert_eq!(entry.kind.name, t);
        let got: Vec<f32> = file.tensor(t).unwrap().to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let want: Vec<f32> = file.tensor(&format!("{t}.expected")).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(got.len(), 512, "{t}");
        let worst = got.iter().zip(&want).map(|(a, b)| (a - b).abs() / b.abs().max(1e-3)).fold(0f32, f32::max);
        assert!(worst < 1e-5, "{t}: worst relative difference {worst}");
        assert!(want.iter().any(|&v| v != 0.0), "{t}: fixture is all zeros");
    }
}
