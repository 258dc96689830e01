//! A recording stand-in for the `adb` executable (the phone boundary, §5.12): a shell script
//! the real provider code runs as `FLOWRUN_ADB`.
//!
//! It appends its arguments to `adb.log` next to it; `get-state` answers `device`; with a file
//! `slow` next to it every other call writes its pid to `slow.pid` and sleeps 30 s, with
//! `gone` it fails with "device not found"; `exec-out screencap -p` writes the bytes of
//! `screen.png` (initially [`PNG`]) to stdout and exits 1 when a file `noscreen` exists;
//! `exec-out uiautomator dump /dev/tty` writes `ui.xml` (an empty hierarchy until a test writes
//! one); any other call exits 1 with a file `fail`, else succeeds.

use std::path::PathBuf;

/// A valid 2×2 PNG: what the stand-in's screen shows until a test writes `screen.png`.
pub const PNG: [u8; 74] = [
    137, 80, 78, 71, 13, 10, 26, 10, 0, 0, 0, 13, 73, 72, 68, 82, 0, 0, 0, 2, 0, 0, 0, 2, 8, 2, 0,
    0, 0, 253, 212, 154, 115, 0, 0, 0, 17, 73, 68, 65, 84, 120, 156, 99, 248, 207, 192, 192, 240,
    31, 140, 128, 24, 0, 29, 240, 3, 253, 211, 208, 125, 38, 0, 0, 0, 0, 73, 69, 78, 68, 174, 66,
    96, 130,
];

pub fn fake_adb() -> (tempfile::TempDir, PathBuf) {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("adb");
    std::fs::write(
        &path,
        "#!/bin/sh\n\
         d=\"$(dirname \"$0\")\"\n\
         echo \"$@\" >> \"$d/adb.log\"\n\
         case \"$*\" in *get-state*) echo device; exit 0;; esac\n\
         if [ -f \"$d/slow\" ]; then echo $$ > \"$d/slow.pid\"; exec sleep 30; fi\n\
         if [ -f \"$d/gone\" ]; then echo \"error: device 'x' not found\" >&2; exit 1; fi\n\
         case \"$*\" in *\"exec-out screencap -p\"*)\n\
           if [ -f \"$d/noscreen\" ]; then echo \"error: screencap failed\" >&2; exit 1; fi\n\
           exec cat \"$d/screen.png\";;\n\
         *\"exec-out uiautomator dump\"*) cat \"$d/ui.xml\" 2>/dev/null || echo '<hierarchy/>'; exit 0;;\n\
         esac\n\
         if [ -f \"$d/fail\" ]; then echo \"error: closed\" >&2; exit 1; fi\n\
         exit 0\n",
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(dir.path().join("screen.png"), PNG).unwrap();
    (dir, path)
}
