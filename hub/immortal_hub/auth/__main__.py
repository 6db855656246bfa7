from immortal_hub.cli.auth import app

app()
