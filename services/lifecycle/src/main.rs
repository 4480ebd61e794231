#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cascade_lifecycle::run().await
}
