//! Names and paths of one environment on a node: the state directory, its files, and the
//! compose projects. Everything of an environment lives under `<state_dir>/<app>-<env>/`.

use crate::config::Environment;

#[derive(Debug, Clone)]
pub struct Paths {
    slug: String,
    base: String,
}

impl Paths {
    pub fn new(env: &Environment) -> Self {
        let state_dir = env.settings.state_dir.trim_end_matches('/');
        let slug = env.slug();
        Paths {
            base: format!("{state_dir}/{slug}"),
            slug,
        }
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub fn lock(&self) -> String {
        format!("{}/lock", self.base)
    }

    pub fn lock_holder(&self) -> String {
        format!("{}/lock.holder", self.base)
    }

    pub fn releases_dir(&self) -> String {
        format!("{}/releases", self.base)
    }

    pub fn release_dir(&self, release: &str) -> String {
        format!("{}/releases/{release}", self.base)
    }

    pub fn current(&self) -> String {
        format!("{}/current", self.base)
    }

    pub fn secrets_dir(&self) -> String {
        format!("{}/secrets", self.base)
    }

    pub fn nginx_dir(&self) -> String {
        format!("{}/nginx", self.base)
    }

    pub fn snapshots_dir(&self) -> String {
        format!("{}/snapshots", self.base)
    }

    /// Commands run apart from the SSH session (see `crate::detached`), one directory each.
    pub fn jobs_dir(&self) -> String {
        format!("{}/jobs", self.base)
    }

    pub fn history(&self) -> String {
        format!("{}/history.jsonl", self.base)
    }

    pub fn active_color(&self) -> String {
        format!("{}/color", self.base)
    }

    pub fn infra_compose(&self) -> String {
        format!("{}/infra.yml", self.base)
    }

    pub fn infra_project(&self) -> String {
        self.slug.clone()
    }

    pub fn network(&self) -> String {
        self.slug.clone()
    }

    pub fn color_project(&self, color: &str) -> String {
        format!("{}-{color}", self.slug)
    }
}
