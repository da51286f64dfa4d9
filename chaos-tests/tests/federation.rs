//! The in-process federation starts, its zones come online, and policy applied at the global
//! reaches every zone.

use chaos_tests::federation::Federation;

#[tokio::test]
async fn policy_applied_at_the_global_reaches_every_zone() {
    let dir = tempfile::tempdir().unwrap();
    let federation = Federation::start(dir.path(), &["zone-1", "zone-2"])
        .await
        .unwrap();
    federation
        .global
        .apply(
            "type: MeshTimeout\nname: slow\nmesh: default\nspec:\n  targetRef:\n    kind: Mesh\n  to:\n    - targetRef:\n        kind: Mesh\n      default:\n        connectionTimeout: 7s\n",
        )
        .await
        .unwrap();
    for zone in &federation.zones {
        let timeout = zone
            .wait_for(
                "the MeshTimeout",
                &["meshes", "default", "meshtimeouts", "slow"],
            )
            .await
            .unwrap();
        assert_eq!(
            timeout["spec"]["to"][0]["default"]["connectionTimeout"], "7s",
            "zone {}: {timeout}",
            zone.name
        );
    }
    federation.stop().await.unwrap();
}
