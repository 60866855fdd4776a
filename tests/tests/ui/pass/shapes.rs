//! `Result`, `Option` with and without `cache_none`, `<param.field>` paths, borrowed
//! parameters, and a parameter named `value`.
use cache_runtime::cached;

#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct User {
    id: u64,
    name: String,
}

struct Query<'a> {
    tenant: &'a str,
    page: (u32, u32),
}

#[derive(Debug, Clone, PartialEq)]
struct NotFound;

#[cached(ttl = 60, key = "user:<id>")]
fn user(id: u64) -> Result<User, NotFound> {
    if id == 0 {
        Err(NotFound)
    } else {
        Ok(User {
            id,
            name: format!("u{id}"),
        })
    }
}

#[cached(tier = "local+redis", ttl = "5m", key = "io:<path>")]
fn read_len(path: &str) -> std::io::Result<u64> {
    Ok(path.len() as u64)
}

#[cached(ttl = 60, key = "find:<name>")]
fn find(name: &str) -> Option<u64> {
    (name == "ada").then_some(1)
}

#[cached(
    tier = "redis",
    ttl = "1h",
    cache_none = true,
    none_ttl = "30s",
    key = "email:<email>"
)]
fn by_email(email: String) -> Option<User> {
    (email == "ada@example.com").then(|| User {
        id: 1,
        name: "ada".into(),
    })
}

#[cached(ttl = 60, cache_none, key = "opt:<q.tenant>:<q.page.0>:<q.page.1>")]
fn page<'a>(q: &Query<'a>) -> Option<Vec<u32>> {
    (q.page.1 > 0).then(|| vec![q.page.0; q.page.1 as usize])
}

#[cached(ttl = 60, key = "value:<value>")]
fn echo(value: u64) -> u64 {
    value
}

fn main() {
    assert_eq!(user(1).map(|u| u.id), Ok(1));
    assert_eq!(user(0), Err(NotFound));
    assert!(lookup_user(0).is_none());
    assert_eq!(lookup_user(1).map(|u| u.name), Some("u1".to_string()));
    populate_user(
        2,
        User {
            id: 2,
            name: "two".into(),
        },
    )
    .unwrap();
    assert_eq!(user(2).unwrap().name, "two");

    assert_eq!(read_len("abc").unwrap(), 3);
    let _: Option<u64> = lookup_read_len("abc");

    assert_eq!(find("ada"), Some(1));
    assert_eq!(find("bob"), None);
    assert_eq!(lookup_find("bob"), None);

    assert!(by_email("x@example.com".into()).is_none());
    let cached: Option<Option<User>> = lookup_by_email("x@example.com".into());
    assert!(matches!(cached, None | Some(None)));
    let _ = populate_by_email("y@example.com".into(), None);

    let q = Query {
        tenant: "t:1",
        page: (3, 2),
    };
    assert_eq!(page(&q), Some(vec![3, 3]));
    assert_eq!(lookup_page(&q), Some(Some(vec![3, 3])));

    assert_eq!(echo(9), 9);
    populate_echo(9, 10).unwrap();
    assert_eq!(echo(9), 10);
    assert_eq!(lookup_echo(9), Some(10));
}
