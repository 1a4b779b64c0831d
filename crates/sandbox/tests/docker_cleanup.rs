//! The leftover sweeps, in their own test process (they remove every container of this pid,
//! which would pull sandboxes from under the other docker tests).

mod docker_support;

use std::collections::HashMap;

use bollard::models::ContainerCreateBody;
use docker_support::*;
use swegym_sandbox::docker::{LABEL, LABEL_HOST, LABEL_PID};
use swegym_sandbox::Limits;

#[tokio::test]
async fn leftovers_of_this_process_and_of_dead_processes_are_swept() {
    let Some(backend) = backend().await else { return };
    let Some(image) = sandbox_image(&backend).await else { return };

    // A sandbox leaked on purpose (no destroy, no drop): the per-process sweep removes it.
    let sb = backend.create_sandbox(&image, None, &Limits::default()).await.unwrap();
    let id = sb.container_id().to_string();
    std::mem::forget(sb);
    assert!(backend.cleanup_leftovers().await.unwrap() >= 1);
    assert!(backend.docker().inspect_container(&id, None).await.is_err(), "leaked sandbox survived the sweep");

    // A container labelled by a process of this host that is gone: the orphan sweep removes it.
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let dead_pid = (4_000_000..4_100_000).find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists()).unwrap();
    let swegym_image = match &image {
        swegym_sandbox::EnvHandle::Image { image } => image.clone(),
        _ => unreachable!(),
    };
    let labels = HashMap::from([
        (LABEL.to_string(), "1".to_string()),
        (LABEL_PID.to_string(), dead_pid.to_string()),
        (LABEL_HOST.to_string(), host),
    ]);
    let body =
        ContainerCreateBody { image: Some(swegym_image), cmd: Some(vec!["true".into()]), labels: Some(labels), ..Default::default() };
    let orphan = backend.docker().create_container(None, body).await.unwrap();
    assert!(backend.cleanup_orphans().await.unwrap() >= 1);
    assert!(backend.docker().inspect_container(&orphan.id, None).await.is_err(), "orphan survived the sweep");
}
