"""Sample requests the end-to-end tests send: a MOEX client registration document and a
KISC pacs.008 message, with the URLs the apps call them at."""

from __future__ import annotations

APPLICATIONS = "http://play-apim.moex.com/client/v1/applications/"


def document(n: int) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?>\n'
        f'<CLIENT_REGISTRATION DOC_DATE="2026-11-20" DOC_NUM="{n}">\n'
        '  <CLIENT TYPE="UL" INN="7701234567" NAME="ООО &quot;Ромашка&quot;"/>\n'
        "</CLIENT_REGISTRATION>\n"
    ).encode()


MESSAGES = "http://ax.kisc.kz/etsfo/1.0.0/messages/"
PACS_008 = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n'
    b'<Envelope xmlns="urn:iso:std:iso:20022:tech:xsd:head.001.001.01">\r\n'
    b"  <AppHdr><Fr>BANKKZKA</Fr><To>KISCKZKA</To><BizMsgIdr>GRO2026112200001</BizMsgIdr>"
    b"<MsgDefIdr>pacs.008.001.08</MsgDefIdr></AppHdr>\n"
    b"  <Document><FIToFICstmrCdtTrf><GrpHdr><MsgId>GRO2026112200001</MsgId><NbOfTxs>1"
    b"</NbOfTxs></GrpHdr><CdtTrfTxInf><IntrBkSttlmAmt Ccy=\"KZT\">150000.00"
    b"</IntrBkSttlmAmt></CdtTrfTxInf></FIToFICstmrCdtTrf></Document>\n</Envelope>\n"
)
