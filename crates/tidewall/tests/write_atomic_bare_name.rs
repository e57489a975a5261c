//! `fs::write_atomic` given a bare file name (a path whose parent is the empty path), in a
//! binary of its own: the test changes the process's working directory, which no other test
//! may share. Written from the rustdoc alone, as part of the hostile round on `tidewall::fs`.

#[tokio::test(flavor = "current_thread")]
async fn write_atomic_with_a_bare_relative_file_name_writes_in_the_working_directory() {
    // The temporary file and the directory sync must use the working directory.
    let dir = tempfile::tempdir().unwrap();
    std::env::set_current_dir(dir.path()).unwrap();
    tidewall::fs::write_atomic(&tidewall::rt::Tokio, "bare.txt", b"bare".to_vec())
        .await
        .unwrap();
    assert_eq!(std::fs::read(dir.path().join("bare.txt")).unwrap(), b"bare");
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["bare.txt"], "no temporary file left beside it");
}
