"""Looking at results: summaries, the HTML report and its plots, the Streamlit app."""
