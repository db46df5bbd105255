//! The signals: SIGTERM (from an orchestrator) or Ctrl-C stop the server (what stopping
//! does, in order, is `App::run_until_stopped`'s); SIGHUP reloads what can change
//! without a restart (ingest tokens, the TLS certificate).

/// Resolves on SIGTERM or Ctrl-C.
pub async fn signal() {
    let ctrl_c = async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "Cannot listen for Ctrl-C.");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(e) => {
                tracing::error!(error = %e, "Cannot listen for SIGTERM.");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("Ctrl-C received."),
        _ = term => tracing::info!("SIGTERM received."),
    }
}

/// Takes over SIGHUP from the moment it is called, so that a SIGHUP while Sluice
/// starts (a config management tool reloading everything at once) does not kill the
/// process, as the signal's default action would. Those SIGHUPs are ignored: what
/// start-up reads is read afresh anyway. Keep the returned value until
/// [`on_hangup`] listens.
pub fn hold_hangups() -> Option<impl Sized> {
    #[cfg(unix)]
    {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok()
    }
    #[cfg(not(unix))]
    {
        None::<()>
    }
}

/// Calls `reload` on every SIGHUP until `stop`.
pub async fn on_hangup(
    reload: impl Fn() + Send + 'static,
    stop: tokio_util::sync::CancellationToken,
) {
    #[cfg(unix)]
    {
        let mut hangups = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::hangup(),
        ) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "Cannot listen for SIGHUP; reloading needs a restart.");
                return;
            }
        };
        loop {
            tokio::select! {
                got = hangups.recv() => match got {
                    Some(()) => {
                        tracing::info!("SIGHUP received: reloading.");
                        reload();
                    }
                    None => return,
                },
                _ = stop.cancelled() => return,
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = reload;
        stop.cancelled().await;
    }
}
