//! Models from the Hugging Face hub: downloads through hf-hub against a
//! local server that answers as the hub does (revision info, ranged
//! `resolve` requests with commit and etag headers), into a cache laid out
//! as huggingface_hub lays it out; offline mode; resuming a partial download.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use atelier::models::Hub;
use sha2::Digest;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// One request as the server saw it: path, Range header, Authorization header.
type Seen = Arc<Mutex<Vec<(String, Option<String>, Option<String>)>>>;

struct FakeHub {
    url: String,
    seen: Seen,
    files: BTreeMap<String, Vec<u8>>,
}

fn etag(bytes: &[u8]) -> String {
    hex(&sha2::Sha256::digest(bytes))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The shared SD 1.x parity model plus files the engine must never fetch.
fn repo_files() -> BTreeMap<String, Vec<u8>> {
    let model = common::sd15_case().join("model");
    let mut files = BTreeMap::new();
    for rel in atelier::models::cache::relative_files(&model) {
        files.insert(rel.clone(), std::fs::read(model.join(&rel)).unwrap());
    }
    files.insert("safety_checker/model.safetensors".into(), vec![7; 1000]);
    files.insert("unet/diffusion_pytorch_model.bin".into(), vec![8; 1000]);
    files.insert("v1-5-pruned-emaonly.ckpt".into(), vec![9; 1000]);
    files
}

/// Serves `org/tiny` (and refuses `org/gated` without a token).
fn serve(files: BTreeMap<String, Vec<u8>>) -> FakeHub {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let seen: Seen = Arc::default();
    let (log, served) = (seen.clone(), files.clone());
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            let path = line.split_whitespace().nth(1).unwrap_or("").to_string();
            let (mut range, mut auth) = (None, None);
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h.trim().is_empty() {
                    break;
                }
                let (name, value) = h.split_once(':').unwrap_or((&h, ""));
                match name.to_ascii_lowercase().as_str() {
                    "range" => range = Some(value.trim().to_string()),
                    "authorization" => auth = Some(value.trim().to_string()),
                    _ => {}
                }
            }
            log.lock()
                .unwrap()
                .push((path.clone(), range.clone(), auth.clone()));
            let mut out = stream;
            let respond =
                |out: &mut std::net::TcpStream, status: &str, headers: &str, body: &[u8]| {
                    let head = format!(
                    "HTTP/1.1 {status}\r\n{headers}Content-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                    let _ = out.write_all(head.as_bytes());
                    let _ = out.write_all(body);
                };
            if path.contains("org/gated") && auth.is_none() {
                respond(&mut out, "401 Unauthorized", "", b"{\"error\":\"gated\"}");
            } else if path == "/api/models/org/tiny/revision/main" {
                let siblings: Vec<_> = served
                    .keys()
                    .map(|f| serde_json::json!({"rfilename": f}))
                    .collect();
                let body = serde_json::json!({"sha": COMMIT, "siblings": siblings}).to_string();
                respond(
                    &mut out,
                    "200 OK",
                    "Content-Type: application/json\r\n",
                    body.as_bytes(),
                );
            } else if let Some(file) = path.strip_prefix("/org/tiny/resolve/main/") {
                let Some(bytes) = served.get(file) else {
                    respond(&mut out, "404 Not Found", "", b"");
                    continue;
                };
                let spec = range
                    .as_deref()
                    .and_then(|r| r.strip_prefix("bytes="))
                    .unwrap_or("0-");
                let (a, b) = spec.split_once('-').unwrap();
                let start: usize = a.parse().unwrap_or(0).min(bytes.len());
                let end: usize = b
                    .parse()
                    .map(|e: usize| e + 1)
                    .unwrap_or(bytes.len())
                    .min(bytes.len());
                let headers = format!(
                    "X-Repo-Commit: {COMMIT}\r\nETag: \"{}\"\r\nContent-Range: bytes {start}-{}/{}\r\n",
                    etag(bytes),
                    end.saturating_sub(1),
                    bytes.len()
                );
                respond(
                    &mut out,
                    "206 Partial Content",
                    &headers,
                    &bytes[start..end],
                );
            } else {
                respond(&mut out, "404 Not Found", "", b"");
            }
        }
    });
    FakeHub { url, seen, files }
}

fn hub(cache: &Path, endpoint: &str, offline: bool) -> Hub {
    Hub {
        cache: cache.to_path_buf(),
        endpoint: endpoint.to_string(),
        token: None,
        offline,
        progress: false,
    }
}

fn downloaded(seen: &Seen) -> Vec<String> {
    seen.lock()
        .unwrap()
        .iter()
        .filter_map(|(p, r, _)| {
            // The metadata probe asks for byte 0 only; count real downloads.
            (r.as_deref() != Some("bytes=0-0"))
                .then(|| p.strip_prefix("/org/tiny/resolve/main/").map(String::from))
                .flatten()
        })
        .collect()
}

#[test]
fn downloads_only_what_the_engine_needs_into_the_hub_cache_layout() {
    let server = serve(repo_files());
    let cache = tempfile::tempdir().unwrap();
    let snapshot = hub(cache.path(), &server.url, false)
        .fetch("org/tiny", false)
        .unwrap();

    let root = cache.path().join("models--org--tiny");
    assert_eq!(snapshot, root.join("snapshots").join(COMMIT));
    assert_eq!(
        std::fs::read_to_string(root.join("refs/main"))
            .unwrap()
            .trim(),
        COMMIT
    );
    let unet = snapshot.join("unet/diffusion_pytorch_model.safetensors");
    assert!(std::fs::symlink_metadata(&unet)
        .unwrap()
        .file_type()
        .is_symlink());
    let blob = root.join("blobs").join(etag(
        &server.files["unet/diffusion_pytorch_model.safetensors"],
    ));
    assert_eq!(std::fs::read(&blob).unwrap(), std::fs::read(&unet).unwrap());

    let got = downloaded(&server.seen);
    for never in [
        "safety_checker/model.safetensors",
        "unet/diffusion_pytorch_model.bin",
        "v1-5-pruned-emaonly.ckpt",
    ] {
        assert!(
            !got.iter().any(|f| f == never),
            "downloaded {never}: {got:?}"
        );
    }
    assert!(got.iter().any(|f| f == "tokenizer/vocab.json"), "{got:?}");
    // The snapshot is a model the engine loads.
    atelier::engine::Model::load(
        &snapshot,
        &candle_core::Device::Cpu,
        candle_core::DType::F32,
    )
    .unwrap();

    // `atelier models` sees it, complete, with its architecture.
    let listed = atelier::models::list::list(Some(cache.path()), &[]);
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].name, "org/tiny");
    assert_eq!(listed[0].arch, "SD 1.x");
    assert!(listed[0].missing.is_none(), "{:?}", listed[0].missing);

    // A second fetch needs no network: the hub is unreachable now.
    let again = hub(cache.path(), "http://127.0.0.1:9", false)
        .fetch("org/tiny", false)
        .unwrap();
    assert_eq!(again, snapshot);
}

#[test]
fn an_interrupted_download_resumes_from_its_part_file() {
    let server = serve(repo_files());
    let cache = tempfile::tempdir().unwrap();
    let weights = &server.files["unet/diffusion_pytorch_model.safetensors"];
    let blobs = cache.path().join("models--org--tiny/blobs");
    std::fs::create_dir_all(&blobs).unwrap();
    let half = weights.len() / 2;
    std::fs::write(
        blobs.join(format!("{}.part", etag(weights))),
        &weights[..half],
    )
    .unwrap();

    let snapshot = hub(cache.path(), &server.url, false)
        .fetch("org/tiny", false)
        .unwrap();
    let resumed = format!("bytes={half}-");
    assert!(
        server.seen.lock().unwrap().iter().any(|(p, r, _)| p
            .ends_with("unet/diffusion_pytorch_model.safetensors")
            && r.as_deref() == Some(resumed.as_str())),
        "no request resumed at byte {half}"
    );
    assert_eq!(
        &std::fs::read(snapshot.join("unet/diffusion_pytorch_model.safetensors")).unwrap(),
        weights
    );
}

/// A cache written the way huggingface_hub writes it, holding only `keep`.
fn fake_cache(
    cache: &Path,
    files: &BTreeMap<String, Vec<u8>>,
    keep: impl Fn(&str) -> bool,
) -> PathBuf {
    let root = cache.join("models--org--tiny");
    let snapshot = root.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    std::fs::write(root.join("refs/main"), COMMIT).unwrap();
    for (name, bytes) in files.iter().filter(|(n, _)| keep(n)) {
        let blob = root.join("blobs").join(etag(bytes));
        std::fs::write(&blob, bytes).unwrap();
        let link = snapshot.join(name);
        std::fs::create_dir_all(link.parent().unwrap()).unwrap();
        let depth = name.matches('/').count() + 2;
        let target = format!("{}blobs/{}", "../".repeat(depth), etag(bytes));
        std::os::unix::fs::symlink(target, &link).unwrap();
    }
    snapshot
}

#[test]
fn offline_uses_a_complete_cache_and_names_what_a_partial_one_lacks() {
    let files = repo_files();
    let complete = tempfile::tempdir().unwrap();
    let snapshot = fake_cache(complete.path(), &files, |_| true);
    let found = hub(complete.path(), "http://127.0.0.1:9", true)
        .fetch("org/tiny", false)
        .unwrap();
    assert_eq!(found, snapshot);
    atelier::engine::Model::load(&found, &candle_core::Device::Cpu, candle_core::DType::F32)
        .unwrap();

    let partial = tempfile::tempdir().unwrap();
    fake_cache(partial.path(), &files, |n| {
        !n.starts_with("vae/diffusion") && !n.starts_with("tokenizer/")
    });
    let err = hub(partial.path(), "http://127.0.0.1:9", true)
        .fetch("org/tiny", false)
        .unwrap_err()
        .to_string();
    for expected in [
        "vae/diffusion_pytorch_model.safetensors",
        "tokenizer/",
        "HF_HUB_OFFLINE",
        "hf download org/tiny",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in: {err}");
    }
    let nothing = tempfile::tempdir().unwrap();
    let err = hub(nothing.path(), "http://127.0.0.1:9", true)
        .fetch("org/tiny", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not in the cache"), "{err}");
}

#[test]
fn a_gated_repository_asks_for_a_token_and_the_token_is_sent() {
    let server = serve(repo_files());
    let cache = tempfile::tempdir().unwrap();
    let err = hub(cache.path(), &server.url, false)
        .fetch("org/gated", false)
        .unwrap_err()
        .to_string();
    assert!(err.contains("HF_TOKEN"), "{err}");

    let mut with_token = hub(cache.path(), &server.url, false);
    with_token.token = Some("hf_secret".into());
    with_token.fetch("org/tiny", false).unwrap();
    assert!(server
        .seen
        .lock()
        .unwrap()
        .iter()
        .any(|(_, _, auth)| auth.as_deref() == Some("Bearer hf_secret")));
}

#[test]
fn an_unreachable_hub_says_how_to_work_offline() {
    let cache = tempfile::tempdir().unwrap();
    let err = hub(cache.path(), "http://127.0.0.1:9", false)
        .fetch("org/tiny", false)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot reach") && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}
