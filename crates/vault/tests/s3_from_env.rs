//! `vault::storage::open("s3://bucket/prefix")` the way the CLI calls it: endpoint, region and
//! credentials from the usual AWS environment variables. The only test of this binary, so
//! setting the process's environment races nothing.

mod common;

use common::s3::{S3Server, ACCESS_KEY, BUCKET, SECRET_KEY};
use common::{cheap, data, push, read_all, small};
use vault::check::check;
use vault::keys::Secret;
use vault::storage::{open, Kind};
use vault::Repository;

#[test]
fn open_reads_the_aws_environment() {
    let server = S3Server::start();
    for v in [
        "AWS_ENDPOINT_URL_S3",
        "AWS_ENDPOINT",
        "AWS_DEFAULT_REGION",
        "AWS_SESSION_TOKEN",
        "AWS_MAX_ATTEMPTS",
    ] {
        std::env::remove_var(v);
    }
    std::env::set_var("AWS_ENDPOINT_URL", server.endpoint());
    std::env::set_var("AWS_REGION", "us-east-1");
    std::env::set_var("AWS_ACCESS_KEY_ID", ACCESS_KEY);
    std::env::set_var("AWS_SECRET_ACCESS_KEY", SECRET_KEY);

    let location = format!("s3://{BUCKET}/from-env/phone");
    let storage = open(&location).unwrap();
    assert_eq!(storage.location(), location);
    let (repo, _) = Repository::init(storage, b"pw", cheap(), small()).unwrap();
    let s = push(&repo, &[("f", data(3, 300_000))], "c");

    // Another open of the same location sees it; the objects are where the layout says.
    let again = Repository::open(open(&location).unwrap(), &Secret::Password(b"pw")).unwrap();
    assert_eq!(read_all(&again, &s.to_hex())["f"], data(3, 300_000));
    assert!(check(&again, true, None).unwrap().problems.is_empty());
    let direct = server.storage("from-env/phone");
    assert_eq!(direct.list(Kind::Config).unwrap().len(), 1);
    assert!(server.bucket_dir().join("from-env/phone/config").is_file());

    // A wrong secret in the environment: refused by the server, and not in the message.
    std::env::set_var("AWS_SECRET_ACCESS_KEY", "kbEnvWrongSecret-71");
    let e = Repository::open(open(&location).unwrap(), &Secret::Password(b"pw")).unwrap_err();
    let shown = format!("{e} {e:?}");
    assert!(shown.contains("answered 403"), "{shown}");
    assert!(!shown.contains("kbEnvWrongSecret-71"), "{shown}");
    // No credentials at all: refused before any request.
    std::env::remove_var("AWS_SECRET_ACCESS_KEY");
    let e = open(&location).err().expect("refused");
    assert!(e.to_string().contains("AWS_SECRET_ACCESS_KEY"), "{e}");
}
