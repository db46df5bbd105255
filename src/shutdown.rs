//! The signals: SIGTERM (from an orchestrator) or Ctrl-C stop the server (what stopping
//! does, in order, is `App::run_until_stopped`'s); SIGHUP reloads what can change
//! without a restart (ingest tokens, the TLS certificate).

/// Listens for SIGTERM and Ctrl-C from the moment it is called (so that a signal sent
/// just after start-up is not met by the default action, which kills the process) and
/// returns a future that resolves on the first of them.
pub fn signal() -> impl std::future::Future<Output = ()> + Send + 'static {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let term = signal(SignalKind::terminate());
        let interrupt = signal(SignalKind::interrupt());
        async move {
            let (mut term, mut interrupt) = match (term, interrupt) {
                (Ok(t), Ok(i)) => (t, i),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::error!(error = %e, "Cannot listen for SIGTERM and Ctrl-C.");
                    return std::future::pending().await;
                }
            };
            tokio::select! {
                _ = interrupt.recv() => tracing::info!("Ctrl-C received."),
                _ = term.recv() => tracing::info!("SIGTERM received."),
            }
        }
    }
    #[cfg(not(unix))]
    async {
        if let Err(e) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %e, "Cannot listen for Ctrl-C.");
            std::future::pending::<()>().await;
        }
        tracing::info!("Ctrl-C received.");
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
