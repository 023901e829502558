//! `fake-upstream`: runs the fake OpenAI-compatible provider on
//! `FAKE_UPSTREAM_ADDR` (default 127.0.0.1:0) and prints its base URL.

#![allow(clippy::print_stdout)]

fn main() -> std::io::Result<()> {
    let addr = std::env::var("FAKE_UPSTREAM_ADDR").unwrap_or_else(|_| "127.0.0.1:0".into());
    actix_rt::System::new().block_on(sluice_test_support::fake_upstream::serve(
        &addr,
        Default::default(),
        |bound| println!("http://{bound}/v1"),
    ))
}
