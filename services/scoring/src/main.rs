#[tokio::main]
async fn main() -> anyhow::Result<()> {
    cascade_scoring::run().await
}
