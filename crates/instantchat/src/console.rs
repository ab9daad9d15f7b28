//! The live event console: a small page at `/` that connects to this server's gateway with
//! socket.io-client, authenticates with a pasted token, subscribes and lists the events as they
//! arrive, resuming with `since` after a reconnect. Its files live in `web/` at the repository
//! root, with socket.io-client's browser bundle committed in `web/vendor/socket.io-client/`;
//! `build.rs` checks the bundle's SHA-256 and the binary embeds all of them, so nothing is read
//! from disk at run time.
//!
//! Routes: `/` (the page), `/console/app.js`, `/console/style.css`, `/console/socket.io.min.js`,
//! and in `dev` mode `/console/config.json`, which hands the dev token to the page opened from the
//! link `dev` prints (it carries a key) on this machine, so the token field comes prefilled.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

macro_rules! embedded {
    ($name:literal) => {
        include_bytes!(concat!(env!("OUT_DIR"), "/console/", $name))
    };
}

const INDEX_HTML: &[u8] = embedded!("index.html");
const APP_JS: &[u8] = embedded!("app.js");
const STYLE_CSS: &[u8] = embedded!("style.css");
const SOCKET_IO_JS: &[u8] = embedded!("socket.io.min.js");

/// The page loads only its own scripts and styles and talks only to this origin.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// What `dev` offers the console: a token and its user, to whoever has the key.
#[derive(Debug, Clone)]
pub struct DevLogin {
    pub token: String,
    pub user_id: String,
    /// In the fragment of the console link `dev` prints (`/#k=KEY`); the page sends it back.
    pub key: String,
}

/// The console's routes. With `dev_login`, `/console/config.json` serves it to loopback peers.
pub fn router(dev_login: Option<DevLogin>) -> Router {
    let router = Router::new()
        .route("/", get(|| async { page() }))
        .route(
            "/console/app.js",
            get(|| async { asset("text/javascript; charset=utf-8", APP_JS) }),
        )
        .route(
            "/console/style.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE_CSS) }),
        )
        .route(
            "/console/socket.io.min.js",
            get(|| async { asset("text/javascript; charset=utf-8", SOCKET_IO_JS) }),
        );
    let Some(login) = dev_login else {
        return router;
    };
    let config: Arc<str> =
        serde_json::json!({ "token": login.token, "userId": login.user_id, "mode": "dev" })
            .to_string()
            .into();
    let key: Arc<str> = login.key.into();
    router.route(
        "/console/config.json",
        get(move |request: Request| {
            let (config, key) = (config.clone(), key.clone());
            async move { dev_config(&config, &key, &request) }
        }),
    )
}

fn page() -> Response {
    let mut response = asset("text/html; charset=utf-8", INDEX_HTML);
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        header::HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::REFERRER_POLICY,
        header::HeaderValue::from_static("no-referrer"),
    );
    response
}

fn asset(content_type: &'static str, body: &'static [u8]) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body,
    )
        .into_response()
}

/// The dev token, only to the page opened from the link `dev` printed, on this machine. The key
/// in that link is what a tunnel to localhost (ngrok, cloudflared, `ssh -R`: as used to let Meta
/// reach a dev webhook) or a page of another site (DNS rebinding) does not have; the loopback
/// check keeps `dev --bind 0.0.0.0` from offering it to the network at all.
fn dev_config(config: &str, key: &str, request: &Request) -> Response {
    use subtle::ConstantTimeEq;
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let local = peer.is_some_and(|p| p.ip().to_canonical().is_loopback());
    let given = request
        .uri()
        .query()
        .into_iter()
        .flat_map(|q| q.split('&'))
        .find_map(|pair| pair.strip_prefix("k="))
        .unwrap_or_default();
    let keyed = bool::from(given.as_bytes().ct_eq(key.as_bytes()));
    if !local || !keyed {
        return (
            StatusCode::NOT_FOUND,
            "the dev token goes to the console link `instantchat dev` printed, on this machine only",
        )
            .into_response();
    }
    (
        [
            (header::CONTENT_TYPE, "application/json"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        config.to_owned(),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(
                listener,
                router.into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap();
        });
        format!("http://{addr}")
    }

    #[tokio::test]
    async fn serves_the_page_its_files_and_the_dev_token_in_dev_only() {
        let login = DevLogin {
            token: "t.o.k".into(),
            user_id: "dev_user".into(),
            key: "k3y".into(),
        };
        let dev = serve(router(Some(login))).await;
        let serve_mode = serve(router(None)).await;
        let http = reqwest::Client::new();

        let page = http.get(format!("{dev}/")).send().await.unwrap();
        assert_eq!(page.status(), 200);
        assert!(
            page.headers()["content-type"]
                .to_str()
                .unwrap()
                .starts_with("text/html")
        );
        assert!(page.headers().contains_key("content-security-policy"));
        let html = page.text().await.unwrap();
        for src in [
            "/console/socket.io.min.js",
            "/console/app.js",
            "/console/style.css",
        ] {
            assert!(html.contains(src), "the page links {src}");
            let file = http.get(format!("{dev}{src}")).send().await.unwrap();
            assert_eq!(file.status(), 200, "{src}");
        }
        let bundle = http
            .get(format!("{dev}/console/socket.io.min.js"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(bundle.contains("Socket.IO"), "the socket.io-client bundle");

        let config: serde_json::Value = http
            .get(format!("{dev}/console/config.json?k=k3y"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(config["token"], "t.o.k");
        assert_eq!(config["userId"], "dev_user");
        for without in ["", "?k=", "?k=wrong"] {
            let refused = http
                .get(format!("{dev}/console/config.json{without}"))
                .send()
                .await
                .unwrap();
            assert_eq!(refused.status(), 404, "{without:?}");
        }
        let none = http
            .get(format!("{serve_mode}/console/config.json?k=k3y"))
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 404);
    }

    #[test]
    fn the_dev_token_needs_a_loopback_peer_and_the_key() {
        let status = |peer: Option<SocketAddr>, uri: &str| {
            let mut request = Request::new(axum::body::Body::empty());
            *request.uri_mut() = uri.parse().unwrap();
            if let Some(peer) = peer {
                request.extensions_mut().insert(ConnectInfo(peer));
            }
            dev_config("{}", "k3y", &request).status()
        };
        let key = "/console/config.json?k=k3y";
        let local = SocketAddr::from(([127, 0, 0, 1], 5000));
        assert_eq!(status(Some(local), key), StatusCode::OK);
        // IPv6 loopback, and 127.0.0.1 seen through a dual-stack socket (`--bind ::`).
        assert_eq!(
            status(Some("[::1]:5000".parse().unwrap()), key),
            StatusCode::OK
        );
        let mapped = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        assert_eq!(status(Some(mapped), key), StatusCode::OK);
        // Another machine, or no peer at all, even with the key.
        let lan = SocketAddr::from(([192, 168, 1, 9], 5000));
        assert_eq!(status(Some(lan), key), StatusCode::NOT_FOUND);
        assert_eq!(status(None, key), StatusCode::NOT_FOUND);
        // This machine (or a tunnel to it) without the key from the printed link.
        for uri in [
            "/console/config.json",
            "/console/config.json?k=",
            "/console/config.json?k=k3",
        ] {
            assert_eq!(status(Some(local), uri), StatusCode::NOT_FOUND, "{uri}");
        }
    }
}
