//! Pointing nginx at a color: render, `nginx -t`, graceful reload. A config that fails the
//! test is never left in place.

use anyhow::{bail, Context};

use crate::node::{quote, Node};
use crate::render::{self, Images, Renderer};

/// Exit code of the node-side script when `nginx -t` refuses the config.
const TEST_REFUSED: i32 = 90;

/// Makes `active` (or nothing: a 503 page) the color nginx serves: the new config is
/// tested and, only if it passes, nginx reloads gracefully (one exec for both).
pub async fn point_nginx(
    node: &Node,
    renderer: &Renderer,
    images: &Images,
    active: Option<&str>,
) -> anyhow::Result<()> {
    let conf = render_conf(node, renderer, images, active)?;
    let live = live_path(node);
    let prev = format!("{live}.prev");
    node.sh(&format!(
        "mkdir -p {dir} && if [ -f {live} ]; then cp -p {live} {prev}; fi",
        dir = quote(&node.paths.nginx_dir()),
        live = quote(&live),
        prev = quote(&prev)
    ))
    .await?;
    node.write_file(&live, conf.into_bytes(), 0o644).await?;

    let script = format!("nginx -t 2>&1 || exit {TEST_REFUSED}; nginx -s reload");
    let out = node
        .run(
            &node.infra_exec("nginx", &format!("sh -c {}", quote(&script))),
            crate::host::Input::None,
        )
        .await?;
    if out.code == Some(TEST_REFUSED) {
        node.sh(&format!(
            "if [ -f {p} ]; then mv -f {p} {l}; fi",
            p = quote(&prev),
            l = quote(&live)
        ))
        .await
        .context("restoring the previous nginx config")?;
        bail!(
            "nginx -t refused the new config, the previous one was restored: {}",
            out.tail(4)
        );
    }
    if !out.success() {
        bail!("nginx reload failed: {}", out.tail(4));
    }
    Ok(())
}

/// Writes the initial nginx config (pointing at `active`) if the node has none yet, so nginx
/// can start.
pub async fn ensure_config(
    node: &Node,
    renderer: &Renderer,
    images: &Images,
    active: Option<&str>,
) -> anyhow::Result<()> {
    let live = live_path(node);
    if node.read_file(&live).await?.is_some() {
        return Ok(());
    }
    let conf = render_conf(node, renderer, images, active)?;
    node.write_file(&live, conf.into_bytes(), 0o644).await
}

fn live_path(node: &Node) -> String {
    format!("{}/default.conf", node.paths.nginx_dir())
}

fn render_conf(
    node: &Node,
    renderer: &Renderer,
    images: &Images,
    active: Option<&str>,
) -> anyhow::Result<String> {
    let ctx = render::context(
        &node.env,
        &node.name,
        &node.paths,
        images,
        None,
        None,
        active,
    );
    Ok(renderer.render(render::NGINX, &ctx)?)
}

/// The color nginx serves now, as recorded on the node.
pub async fn active_color(node: &Node) -> anyhow::Result<Option<String>> {
    let text = node.read_file(&node.paths.active_color()).await?;
    Ok(text
        .map(|t| t.trim().to_string())
        .filter(|c| c == "blue" || c == "green"))
}

pub async fn record_active(node: &Node, color: Option<&str>) -> anyhow::Result<()> {
    match color {
        Some(c) => {
            node.write_file(
                &node.paths.active_color(),
                format!("{c}\n").into_bytes(),
                0o644,
            )
            .await
        }
        None => {
            node.sh(&format!("rm -f {}", quote(&node.paths.active_color())))
                .await?;
            Ok(())
        }
    }
}

pub fn other(color: &str) -> &'static str {
    if color == "blue" {
        "green"
    } else {
        "blue"
    }
}
