"""Developer tools: the headless notebook runner (``runner``) and the lab handout generator (``handouts``)."""
