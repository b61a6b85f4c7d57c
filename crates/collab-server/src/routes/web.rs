//! The browser page, embedded in the binary: no Node.js and no files on disk
//! are needed at run time.
//!
//! The bundle in `crates/collab-server/assets/` is built from `web/` by
//! `web/build.mjs` and committed; `node web/build.mjs --check` fails when it
//! is stale.
//!
//! * `GET /` — the document list; `GET /d/{id}` — the editor. Both are the
//!   same `index.html`: the script picks the view from the location.
//! * `GET /assets/{file}` — `app.js`, `app.css` and `collab-client.js` (the
//!   standalone client library, an ES module). `index.html` refers to them
//!   with a `?v=<content hash>` query, and such versioned requests may be
//!   cached for a year; unversioned ones are revalidated every time.
//!
//! Unknown assets get the protocol's JSON 404 body, like any unknown route.

use axum::extract::{Path, RawQuery};
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

use crate::error::AppError;

/// One embedded file under `/assets/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const INDEX_HTML: &[u8] = include_bytes!("../../assets/index.html");

const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/app.js"),
    },
    Asset {
        name: "app.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("../../assets/app.css"),
    },
    Asset {
        name: "collab-client.js",
        content_type: "text/javascript; charset=utf-8",
        body: include_bytes!("../../assets/collab-client.js"),
    },
];

/// Scripts, styles and sockets from this origin only. CodeMirror injects
/// its own `<style>` elements, hence `'unsafe-inline'` for styles.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; \
                   img-src 'self' data:; connect-src 'self'; base-uri 'none'; \
                   form-action 'self'; frame-ancestors 'none'";

const NO_CACHE: &str = "no-cache";
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The page routes. Stateless, so it merges into a router of any state.
pub fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(index))
        .route("/d/{id}", get(index))
        .route("/assets/{file}", get(asset))
}

async fn index() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, NO_CACHE),
            (header::CONTENT_SECURITY_POLICY, CSP),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "same-origin"),
        ],
        INDEX_HTML,
    )
        .into_response()
}

async fn asset(Path(file): Path<String>, RawQuery(query): RawQuery) -> Response {
    let Some(asset) = ASSETS.iter().find(|a| a.name == file) else {
        return AppError::NoRoute.into_response();
    };
    let versioned = query
        .as_deref()
        .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("v=") && kv.len() > 2));
    let mut response = asset.body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(if versioned { IMMUTABLE } else { NO_CACHE }),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    // Third-party pages may import the client library as a module.
    if asset.name == "collab-client.js" {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_ORIGIN,
            HeaderValue::from_static("*"),
        );
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn serve() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, router::<()>()).await.unwrap();
        });
        format!("http://{addr}")
    }

    fn header<'a>(res: &'a reqwest::Response, name: &str) -> &'a str {
        res.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    #[tokio::test]
    async fn pages_assets_and_unknown_files() {
        let base = serve().await;
        for path in ["/", "/d/some-doc"] {
            let res = reqwest::get(format!("{base}{path}")).await.unwrap();
            assert_eq!(res.status(), 200, "{path}");
            assert_eq!(header(&res, "content-type"), "text/html; charset=utf-8");
            assert_eq!(header(&res, "cache-control"), NO_CACHE);
            assert!(header(&res, "content-security-policy").contains("default-src 'self'"));
            let body = res.text().await.unwrap();
            assert!(body.contains("/assets/app.js?v="), "{body}");
            assert!(body.contains("/assets/app.css?v="), "{body}");
        }

        let res = reqwest::get(format!("{base}/assets/app.js?v=abc"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(
            header(&res, "content-type"),
            "text/javascript; charset=utf-8"
        );
        assert_eq!(header(&res, "cache-control"), IMMUTABLE);

        let res = reqwest::get(format!("{base}/assets/app.css"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert_eq!(header(&res, "content-type"), "text/css; charset=utf-8");
        assert_eq!(header(&res, "cache-control"), NO_CACHE);

        let res = reqwest::get(format!("{base}/assets/collab-client.js"))
            .await
            .unwrap();
        assert_eq!(res.status(), 200);
        assert!(res.text().await.unwrap().contains("CollabClient"));

        for path in [
            "/assets/nope.js",
            "/assets/index.html",
            "/assets/..%2Fapp.js",
        ] {
            let res = reqwest::get(format!("{base}{path}")).await.unwrap();
            assert_eq!(res.status(), 404, "{path}");
            let body: serde_json::Value = res.json().await.unwrap();
            assert_eq!(body["error"]["code"], "not_found", "{path}");
        }
    }
}
