//! The live event console: a small page at `/` that connects to this server's gateway with
//! socket.io-client, authenticates with a pasted token, subscribes and lists the events as they
//! arrive, resuming with `since` after a reconnect. Its files live in `web/` at the repository
//! root; `build.rs` installs socket.io-client's browser bundle from npm and the binary embeds all
//! of them, so nothing is read from disk at run time.
//!
//! Routes: `/` (the page), `/console/app.js`, `/console/style.css`, `/console/socket.io.min.js`,
//! and in `dev` mode `/console/config.json`, which hands the dev token to pages loaded from this
//! machine (loopback peers only) so the token field comes prefilled.

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

/// What `dev` offers the console: a token and its user.
#[derive(Debug, Clone)]
pub struct DevLogin {
    pub token: String,
    pub user_id: String,
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
    router.route(
        "/console/config.json",
        get(move |request: Request| {
            let config = config.clone();
            async move { dev_config(&config, &request) }
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

/// Headers a proxy or tunnel adds: a request carrying one came from elsewhere through this machine.
const FORWARDED: [&str; 5] = [
    "forwarded",
    "x-forwarded-for",
    "x-forwarded-host",
    "x-real-ip",
    "cf-connecting-ip",
];

/// The dev token, only to a page on this machine: `dev --bind 0.0.0.0` must not hand a token for
/// every account to the network, nor a tunnel to localhost (ngrok, cloudflared, as used to let
/// Meta reach a dev webhook) to the internet. So: a loopback peer, a loopback `Host` (which also
/// stops DNS rebinding), and no proxy's forwarding headers.
fn dev_config(config: &str, request: &Request) -> Response {
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0);
    let host = request
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.parse::<axum::http::uri::Authority>().ok());
    let local_host = host.is_some_and(|h| {
        let name = h.host().trim_start_matches('[').trim_end_matches(']');
        name.eq_ignore_ascii_case("localhost")
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    });
    let forwarded = FORWARDED.iter().any(|h| request.headers().contains_key(*h));
    if !peer.is_some_and(|p| p.ip().is_loopback()) || !local_host || forwarded {
        return (
            StatusCode::NOT_FOUND,
            "the dev token is offered on loopback only",
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
            .get(format!("{dev}/console/config.json"))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert_eq!(config["token"], "t.o.k");
        assert_eq!(config["userId"], "dev_user");
        let none = http
            .get(format!("{serve_mode}/console/config.json"))
            .send()
            .await
            .unwrap();
        assert_eq!(none.status(), 404);
    }

    #[test]
    fn the_dev_token_is_refused_without_a_loopback_peer() {
        let mut request = Request::new(axum::body::Body::empty());
        request
            .headers_mut()
            .insert(header::HOST, "127.0.0.1:3000".parse().unwrap());
        assert_eq!(dev_config("{}", &request).status(), StatusCode::NOT_FOUND);
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([192, 168, 1, 9], 5000))));
        assert_eq!(dev_config("{}", &request).status(), StatusCode::NOT_FOUND);
        request
            .extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 5000))));
        assert_eq!(dev_config("{}", &request).status(), StatusCode::OK);
    }

    #[test]
    fn the_dev_token_is_refused_through_a_tunnel_or_to_another_host_name() {
        let request = |host: &str, forwarded: Option<(&'static str, &str)>| {
            let mut r = Request::new(axum::body::Body::empty());
            r.extensions_mut()
                .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 5000))));
            r.headers_mut().insert(header::HOST, host.parse().unwrap());
            if let Some((name, value)) = forwarded {
                r.headers_mut().insert(name, value.parse().unwrap());
            }
            dev_config("{}", &r).status()
        };
        for host in ["localhost:3000", "127.0.0.1", "[::1]:3000", "LOCALHOST"] {
            assert_eq!(request(host, None), StatusCode::OK, "{host}");
        }
        // ngrok and cloudflared pass the public name and add forwarding headers.
        assert_eq!(request("abc.ngrok-free.app", None), StatusCode::NOT_FOUND);
        assert_eq!(request("evil.example:3000", None), StatusCode::NOT_FOUND);
        for header in FORWARDED {
            assert_eq!(
                request("localhost:3000", Some((header, "203.0.113.9"))),
                StatusCode::NOT_FOUND,
                "{header}"
            );
        }
    }
}
