"""The studio's page, a module per tab: prompt_tab, picture_tab, the pieces both share (shared) and the API's
payload checks (payloads). app.py assembles them; layers/, the library, imports none of this and no gradio."""
