#[celeriac::task(name = "t")]
async fn t<T: serde::de::DeserializeOwned>(value: T) {}

fn main() {}
