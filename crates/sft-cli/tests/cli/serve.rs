//! Issue 24: `sft serve` over HTTP on 127.0.0.1: greedy chat equals `sft generate` token for
//! token (base and adapter), streamed deltas concatenate to the same text, concurrent requests
//! give what sequential ones give, `echo` log-probabilities sum to transformers' loss on the
//! eval fixture, bad requests get OpenAI-shaped 4xx errors and the server keeps serving, a full
//! queue answers 429, and SIGTERM drains a running stream before the process exits.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use super::{ints, json_file, lines, root, scratch, sft, stderr};

const MODEL: &str = "tests/fixtures/model/eval/model";
const ADAPTER: &str = "tests/fixtures/model/eval/adapter";

/// A running `sft serve` on a free port; killed when dropped.
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(extra: &[&str]) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_sft"))
            .args(["serve", "--model", MODEL, "--adapter", &format!("tuned={ADAPTER}"), "--port", "0"])
            .args(extra)
            .current_dir(root())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run sft serve");
        let mut err = BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let base = loop {
            let mut line = String::new();
            if err.read_line(&mut line).unwrap() == 0 {
                panic!("sft serve exited before serving: {seen}");
            }
            seen.push_str(&line);
            if let Some(url) = line.split_whitespace().find(|w| w.starts_with("http://")) {
                break url.trim_end_matches("/v1").to_string();
            }
        };
        // Keep draining stderr so the server never blocks on a full pipe.
        std::thread::spawn(move || std::io::copy(&mut err, &mut std::io::sink()));
        Server { child, base }
    }

    /// POSTs `body` (raw bytes) to `path`: (status, JSON body).
    fn post_raw(&self, path: &str, body: &[u8]) -> (u16, Value) {
        let r = ureq::post(&format!("{}{path}", self.base))
            .set("Content-Type", "application/json")
            .timeout(Duration::from_secs(120))
            .send_bytes(body);
        match r {
            Ok(r) => (r.status(), r.into_json().expect("JSON body")),
            Err(ureq::Error::Status(code, r)) => (code, r.into_json().expect("JSON error body")),
            Err(e) => panic!("POST {path}: {e}"),
        }
    }

    fn post(&self, path: &str, body: &Value) -> Value {
        let (status, v) = self.post_raw(path, body.to_string().as_bytes());
        assert_eq!(status, 200, "POST {path} {body}: {v}");
        v
    }

    fn get(&self, path: &str) -> Value {
        ureq::get(&format!("{}{path}", self.base)).call().unwrap().into_json().unwrap()
    }

    /// A streamed POST: the `data:` payloads up to and including `[DONE]`.
    fn stream(&self, path: &str, body: &Value) -> Vec<String> {
        let r = ureq::post(&format!("{}{path}", self.base)).send_string(&body.to_string()).unwrap();
        assert_eq!(r.header("content-type"), Some("text/event-stream"));
        let mut text = String::new();
        r.into_reader().read_to_string(&mut text).unwrap();
        text.lines().filter_map(|l| l.strip_prefix("data: ")).map(str::to_string).collect()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn messages(question: &str) -> Value {
    json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}])
}

/// The ids of a logprobs list whose tokens are named `token_id:N`.
fn named_ids(tokens: &[Value]) -> Vec<i64> {
    tokens.iter().map(|t| t.as_str().unwrap().strip_prefix("token_id:").unwrap().parse().unwrap()).collect()
}

fn chat_ids(answer: &Value) -> Vec<i64> {
    let content = answer["choices"][0]["logprobs"]["content"].as_array().unwrap();
    named_ids(&content.iter().map(|e| e["token"].clone()).collect::<Vec<_>>())
}

#[test]
fn greedy_chat_equals_sft_generate_and_the_stream_concatenates_to_it() {
    let server = Server::start(&[]);
    let models = server.get("/v1/models");
    let names: Vec<&str> = models["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap()).collect();
    assert_eq!(names, [MODEL, "tuned"]);
    assert_eq!(server.get("/health")["status"], "ok");

    for (model, adapter) in [(MODEL, None), ("tuned", Some(ADAPTER))] {
        for question in ["Name a colour.", "What is two plus two?"] {
            let file = scratch("serve-messages.json", &messages(question).to_string());
            let mut args = vec!["generate", "--model", MODEL, "--messages", file.to_str().unwrap(), "--max-new-tokens", "24", "--json"];
            if let Some(a) = adapter {
                args.extend(["--adapter", a]);
            }
            let out = sft(&args);
            assert!(out.status.success(), "{}", stderr(&out));
            let expected = &lines(&out)[0];
            let request = json!({"model": model, "messages": messages(question), "max_tokens": 24, "temperature": 0,
                                 "logprobs": true, "return_tokens_as_token_ids": true});
            let answer = server.post("/v1/chat/completions", &request);
            assert_eq!(chat_ids(&answer), ints(&expected["token_ids"]), "{model} {question}");
            let text = answer["choices"][0]["message"]["content"].as_str().unwrap();
            assert_eq!(text, expected["text"].as_str().unwrap());
            let usage = &answer["usage"];
            assert_eq!(usage["completion_tokens"].as_u64().unwrap() as usize, ints(&expected["token_ids"]).len());
            let finish = answer["choices"][0]["finish_reason"].as_str().unwrap();
            assert_eq!(finish, if usage["completion_tokens"] == 24 { "length" } else { "stop" });

            let mut streamed = request.clone();
            streamed["stream"] = json!(true);
            streamed["stream_options"] = json!({"include_usage": true});
            let events = server.stream("/v1/chat/completions", &streamed);
            assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
            let chunks: Vec<Value> = events[..events.len() - 1].iter().map(|e| serde_json::from_str(e).unwrap()).collect();
            let joined: String = chunks.iter().filter_map(|c| c["choices"][0]["delta"]["content"].as_str()).collect();
            assert_eq!(joined, text, "streamed deltas");
            let streamed_ids: Vec<i64> = chunks.iter().filter(|c| c["choices"][0]["logprobs"].is_object()).flat_map(chat_ids).collect();
            assert_eq!(streamed_ids, chat_ids(&answer));
            assert_eq!(chunks.last().unwrap()["usage"], answer["usage"]);
            assert_eq!(chunks[chunks.len() - 2]["choices"][0]["finish_reason"], finish);
        }
    }

    // /tokenize renders messages as the chat path does; /detokenize inverts it.
    let tokens = server.post("/tokenize", &json!({"model": "tuned", "messages": messages("Name a colour.")}));
    let text = server.post("/detokenize", &json!({"tokens": tokens["tokens"]}))["prompt"].as_str().unwrap().to_string();
    assert!(text.contains("Name a colour.") && text.contains("Be brief."), "{text}");
    assert_eq!(server.post("/tokenize", &json!({"prompt": text}))["tokens"], tokens["tokens"]);
}

#[test]
fn concurrent_requests_answer_as_sequential_ones() {
    let server = Server::start(&["--served-model-name", "base"]);
    let names: Vec<Value> = server.get("/v1/models")["data"].as_array().unwrap().iter().map(|m| m["id"].clone()).collect();
    assert_eq!(names, ["base", "tuned"]);
    const MODEL: &str = "base";
    let requests: Vec<Value> = (0..16)
        .map(|i| {
            let model = if i % 2 == 0 { MODEL } else { "tuned" };
            let temperature = if i % 4 < 2 { 0.0 } else { 0.9 };
            json!({"model": model, "prompt": format!("Question {i}: what comes next?"), "max_tokens": 12 + i,
                   "temperature": temperature, "top_k": 40, "seed": i, "logprobs": 1, "return_tokens_as_token_ids": true})
        })
        .collect();
    let sequential: Vec<Value> = requests.iter().map(|r| server.post("/v1/completions", r)["choices"][0].clone()).collect();
    let concurrent: Vec<Value> = std::thread::scope(|s| {
        let handles: Vec<_> = requests.iter().map(|r| s.spawn(|| server.post("/v1/completions", r)["choices"][0].clone())).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, b)) in sequential.iter().zip(&concurrent).enumerate() {
        assert_eq!(a["text"], b["text"], "request {i}");
        assert_eq!(a["logprobs"]["tokens"], b["logprobs"]["tokens"], "request {i}");
        let (la, lb) = (a["logprobs"]["token_logprobs"].as_array().unwrap(), b["logprobs"]["token_logprobs"].as_array().unwrap());
        for (x, y) in la.iter().zip(lb) {
            assert!((x.as_f64().unwrap() - y.as_f64().unwrap()).abs() < 1e-5, "request {i}: {x} vs {y}");
        }
    }
    // Several prompts in one request are several choices, in order.
    let prompts = [&requests[0]["prompt"], &requests[2]["prompt"]];
    let greedy = |prompt: &Value| json!({"model": MODEL, "prompt": prompt, "max_tokens": 12, "temperature": 0});
    let both = server.post("/v1/completions", &greedy(&json!(prompts)));
    let texts: Vec<&Value> = both["choices"].as_array().unwrap().iter().map(|c| &c["text"]).collect();
    let alone: Vec<Value> = prompts.iter().map(|p| server.post("/v1/completions", &greedy(p))["choices"][0]["text"].clone()).collect();
    assert_eq!(texts, alone.iter().collect::<Vec<_>>());
}

/// lm-evaluation-harness's loglikelihood request: prompt ids, `echo`, `max_tokens: 0`.
#[test]
fn echo_logprobs_sum_to_the_reference_loss() {
    let server = Server::start(&[]);
    let expected = json_file(&root().join("tests/fixtures/model/eval/expected.json"));
    let rendered = sft(&["render", "--tokenizer", MODEL, "--tokenize", "tests/fixtures/model/eval/data.jsonl"]);
    assert!(rendered.status.success(), "{}", stderr(&rendered));
    for (model, key) in [(MODEL, "base"), ("tuned", "adapter")] {
        let (mut sum, mut count) = (0.0f64, 0usize);
        for row in lines(&rendered) {
            let ids = ints(&row["input_ids"]);
            let mask = ints(&row["assistant_mask"]);
            let request = json!({"model": model, "prompt": ids, "echo": true, "logprobs": 0, "max_tokens": 0, "temperature": 0});
            let answer = server.post("/v1/completions", &request);
            let choice = &answer["choices"][0];
            let lp = choice["logprobs"]["token_logprobs"].as_array().unwrap();
            assert_eq!(lp.len(), ids.len());
            assert!(lp[0].is_null(), "the first token has no log-probability");
            for (i, v) in lp.iter().enumerate().skip(1) {
                if mask[i] == 1 {
                    sum -= v.as_f64().unwrap();
                    count += 1;
                }
            }
            assert_eq!(choice["finish_reason"], "length");
        }
        let reference = expected[key]["loss_sum"].as_f64().unwrap();
        assert_eq!(count as u64, expected[key]["tokens"].as_u64().unwrap());
        assert!((sum - reference).abs() / reference < 1e-5, "{key}: {sum} vs transformers {reference}");
    }
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let server = Server::start(&[]);
    let chat = |extra: Value| {
        let mut body = json!({"model": MODEL, "messages": messages("Hi.")});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        body
    };
    let long: Vec<u32> = vec![5; 300];
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        ("/v1/chat/completions", b"{not json".to_vec(), 400, ""),
        ("/v1/chat/completions", b"{\"model\": \"m\xff\"}".to_vec(), 400, ""),
        ("/v1/chat/completions", json!({"messages": []}).to_string().into_bytes(), 400, ""),
        ("/v1/chat/completions", chat(json!({"max_tokens": "many"})).to_string().into_bytes(), 400, "max_tokens"),
        ("/v1/chat/completions", chat(json!({"max_tokens": -1})).to_string().into_bytes(), 400, "max_tokens"),
        ("/v1/chat/completions", chat(json!({"temperature": 7})).to_string().into_bytes(), 400, "temperature"),
        ("/v1/chat/completions", chat(json!({"model": "nope"})).to_string().into_bytes(), 404, "model"),
        ("/v1/chat/completions", chat(json!({"messages": [{"role": "user"}]})).to_string().into_bytes(), 400, "messages"),
        ("/v1/completions", json!({"model": MODEL, "prompt": long}).to_string().into_bytes(), 400, "prompt"),
        ("/v1/completions", json!({"model": MODEL, "prompt": [1, -4]}).to_string().into_bytes(), 400, "prompt[1]"),
        ("/v1/completions", json!({"model": MODEL, "prompt": [1, 99999]}).to_string().into_bytes(), 400, "prompt[1]"),
        ("/v1/completions", json!({"model": MODEL, "prompt": "x", "logprobs": 99}).to_string().into_bytes(), 400, "logprobs"),
        ("/detokenize", json!({"tokens": [1, 99999]}).to_string().into_bytes(), 400, "tokens[1]"),
    ];
    for (path, body, status, param) in cases {
        let (got, v) = server.post_raw(path, &body);
        let shown = String::from_utf8_lossy(&body);
        assert_eq!(got, status, "{path} {shown}: {v}");
        let error = &v["error"];
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        assert!(error["type"].is_string(), "{v}");
        if !param.is_empty() {
            assert_eq!(error["param"], param, "{path} {shown}: {v}");
        }
    }
    let long_error = server.post_raw("/v1/completions", json!({"model": MODEL, "prompt": long}).to_string().as_bytes()).1;
    assert_eq!(long_error["error"]["code"], "context_length_exceeded");
    assert_eq!(server.get("/health")["status"], "ok");
    let answer = server.post("/v1/chat/completions", &chat(json!({"max_tokens": 3})));
    assert_eq!(answer["object"], "chat.completion");
}

#[test]
fn a_full_queue_answers_429_and_freed_slots_serve_again() {
    let server = Server::start(&["--max-concurrency", "1", "--queue", "0"]);
    let body = json!({"model": MODEL, "prompt": "Count on:", "max_tokens": 200, "temperature": 0}).to_string();
    let mut busy = 0;
    for _ in 0..3 {
        let statuses: Vec<u16> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8).map(|_| s.spawn(|| server.post_raw("/v1/completions", body.as_bytes()))).collect();
            handles
                .into_iter()
                .map(|h| {
                    let (status, v) = h.join().unwrap();
                    if status == 429 {
                        assert_eq!(v["error"]["code"], "queue_full", "{v}");
                    } else {
                        assert_eq!(status, 200, "{v}");
                    }
                    status
                })
                .collect()
        });
        busy += statuses.iter().filter(|&&s| s == 429).count();
        if busy > 0 {
            break;
        }
    }
    assert!(busy > 0, "8 requests at once on 1 slot and no queue: some must get 429");
    // A client that goes away mid-stream frees its slot.
    let stream = json!({"model": MODEL, "prompt": "Count on:", "max_tokens": 200, "stream": true}).to_string();
    let r = ureq::post(&format!("{}/v1/completions", server.base)).send_string(&stream).unwrap();
    let mut first = [0u8; 16];
    r.into_reader().read_exact(&mut first).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(server.get("/health")["running"], 0);
    let (status, v) = server.post_raw("/v1/completions", body.as_bytes());
    assert_eq!(status, 200, "{v}");
}

#[test]
fn sigterm_drains_a_running_stream_then_exits() {
    let mut server = Server::start(&[]);
    let body = json!({"model": MODEL, "prompt": "Count on:", "max_tokens": 200, "stream": true, "temperature": 0}).to_string();
    let r = ureq::post(&format!("{}/v1/completions", server.base)).send_string(&body).unwrap();
    let mut reader = BufReader::new(r.into_reader());
    let mut first = String::new();
    reader.read_line(&mut first).unwrap();
    assert!(first.starts_with("data: "), "{first}");
    let pid = server.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut rest = String::new();
    reader.read_to_string(&mut rest).unwrap();
    assert!(rest.trim_end().ends_with("data: [DONE]"), "the running stream ends whole: {rest}");
    let status = server.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

#[test]
fn bad_adapters_stop_the_server_before_it_listens() {
    for (adapter, expected) in [
        ("no-equals-sign", "expected NAME=DIR"),
        ("x=tests/fixtures/model/phi3/adapter", "phi3/adapter"),
        ("x=tests/fixtures/model/does-not-exist", "does-not-exist"),
    ] {
        let out = sft(&["serve", "--model", MODEL, "--adapter", adapter, "--port", "0"]);
        assert!(!out.status.success(), "{adapter}");
        assert!(stderr(&out).contains(expected), "{adapter}: {}", stderr(&out));
    }
    let taken = format!("{MODEL}={ADAPTER}");
    let out = sft(&["serve", "--model", MODEL, "--adapter", &taken, "--port", "0"]);
    assert!(!out.status.success() && stderr(&out).contains("is taken"), "{}", stderr(&out));
    let out = sft(&["serve", "--model", MODEL, "--served-model-name", "tuned", "--adapter", &format!("tuned={ADAPTER}"), "--port", "0"]);
    assert!(!out.status.success() && stderr(&out).contains("is taken"), "{}", stderr(&out));
}

#[test]
fn a_request_past_the_timeout_ends_with_408() {
    let server = Server::start(&["--timeout", "0.001"]);
    let body = json!({"model": MODEL, "prompt": "Count on:", "max_tokens": 200, "temperature": 0});
    let (status, v) = server.post_raw("/v1/completions", body.to_string().as_bytes());
    assert_eq!(status, 408, "{v}");
    assert_eq!(v["error"]["code"], "timeout");
    assert_eq!(server.get("/health")["running"], 0);
}
