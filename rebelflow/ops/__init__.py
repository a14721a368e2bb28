"""Operations around campaigns: deployments and workers (`deploy`), the machine and config report
(`doctor`), and the run history from the Prefect API (`history`)."""
