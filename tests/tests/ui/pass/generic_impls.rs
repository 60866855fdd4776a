//! Generic `impl`s and generic functions: one cache per instantiation.
#![deny(warnings)]

use std::marker::PhantomData;

use cache_runtime::cached;
use cache_runtime::key::KeyPart;

pub struct Typed<T> {
    id: u64,
    _t: PhantomData<T>,
}

impl<T: Send + Sync + 'static> Typed<T> {
    #[cached(ttl = 300, key = "typed:<self.id>:<x>")]
    fn sized_by_id(&self, x: usize) -> usize {
        std::mem::size_of::<T>() + x
    }

    // The default key, `self` skipped: `T` (only `self` has it) does not tell entries
    // apart, as a function's own type parameter that only skipped parameters have.
    #[cached(ttl = 300, skip(self))]
    fn sized(&self, x: usize) -> usize {
        let _ = self.id;
        2 * x
    }
}

// The value type may be the type parameter (and `Self` may appear in it).
pub struct Wrapper<T>(T);

impl<T: KeyPart + Clone + Send + Sync + 'static> Wrapper<T> {
    #[cached(ttl = 60, key = "wrap:<x>")]
    fn wrap(x: T) -> Option<Vec<T>> {
        Some(vec![x])
    }

    #[cached(ttl = 60, skip(self))]
    fn pair(&self, n: u8) -> (T, u8) {
        (self.0.clone(), n)
    }
}

#[derive(Clone, PartialEq, Debug)]
pub struct Node(u8);

impl Node {
    #[cached(ttl = 60, key = "node:<n>")]
    fn make(n: u8) -> Self {
        Self(n)
    }
}

#[cached(ttl = 300)]
fn echo<T: KeyPart + Clone + Send + Sync + 'static>(x: T) -> T {
    x
}

#[cached(ttl = 300, key = "zeros:<n>")]
fn zeros<const N: usize>(n: u8) -> Vec<u8> {
    vec![n; N]
}

// A `where` clause with only lifetime bounds.
#[cached(ttl = 60, key = "longest:<a>:<b>")]
fn longest<'a, 'b>(a: &'a str, b: &'b str) -> String
where
    'b: 'a,
{
    if a.len() >= b.len() { a } else { b }.to_string()
}

// A `where` clause on a type parameter.
#[cached(ttl = 60, key = "show:<x>")]
fn show<T>(x: T) -> String
where
    T: KeyPart + std::fmt::Display,
{
    x.to_string()
}

fn typed<T>(id: u64) -> Typed<T> {
    Typed {
        id,
        _t: PhantomData,
    }
}

pub fn main() {
    assert_eq!(typed::<u8>(1).sized_by_id(0), 1);
    assert_eq!(typed::<u64>(1).sized_by_id(0), 8);
    assert_eq!(typed::<u8>(1).lookup_sized_by_id(0), Some(1));
    assert_eq!(typed::<u16>(1).sized(3), 6);
    assert_eq!(typed::<u32>(1).lookup_sized(3), Some(6));
    assert_eq!(Wrapper::<u8>::wrap(3), Some(vec![3u8]));
    assert_eq!(Wrapper::<u16>::wrap(3), Some(vec![3u16]));
    assert_eq!(Wrapper::<u16>::lookup_wrap(3), Some(vec![3u16]));
    assert_eq!(Wrapper("a".to_string()).pair(1), ("a".to_string(), 1));
    assert_eq!(Node::make(4), Node(4));
    assert_eq!(Node::lookup_make(4), Some(Node(4)));
    assert_eq!(echo(1u8), 1);
    assert!(echo(true));
    assert_eq!(lookup_echo(1u8), Some(1));
    assert_eq!(zeros::<2>(1), vec![1, 1]);
    assert_eq!(zeros::<3>(1), vec![1, 1, 1]);
    assert_eq!(longest("ab", "c"), "ab");
    assert_eq!(show(5u8), "5");
    assert_ne!(echo_cache::<u8>().name(), echo_cache::<bool>().name());
}
