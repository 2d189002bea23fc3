"""Deterministic sample data: Brazilian-Portuguese support chats in the reference schema.

``load_sample`` fills the ``chat`` schema (db/reference/schema.sql) with realistic
customer-support sessions for two kinds of business: an internet/phone provider and
a health clinic. Everything is derived from ``(seed, client slug, ordinal)``, so the
same arguments always give the same ids and the same text, and a larger ``sessions``
later only adds the new sessions. Timestamps are placed relative to ``now``.

Rows are generated per batch, streamed with COPY into TEMP staging tables and moved
with ``INSERT ... SELECT ... ON CONFLICT DO NOTHING``, one committed transaction per
batch. A background thread generates the next batch while the server inserts the
current one.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.resources
import queue
import random
import threading
import time
from collections.abc import Callable, Generator, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import psycopg
from psycopg.rows import tuple_row

__all__ = ["DEFAULT_CLIENTS", "SampleStats", "load_sample", "sql_path"]

DEFAULT_CLIENTS: tuple[tuple[str, str], ...] = (
    ("acme-telecom", "Acme Telecom"),
    ("clinica-bem-estar", "Clínica Bem-Estar"),
)

BATCH_SESSIONS = 2_000  # sessions generated, copied and committed together
TAG_VOCABULARY = ("vip", "lead", "inadimplente", "teste", "parceiro", "cliente-antigo")

_DAY = 86_400
_WINDOW = 30 * _DAY  # sessions start within the last 30 days


def sql_path(*parts: str) -> Path:
    """Path of a file under the project's ``db`` directory, e.g. ``sql_path("reference",
    "schema.sql")``: the copy packaged in the wheel first, then the source checkout."""
    checkout = Path(__file__).resolve().parents[2].joinpath("db", *parts)
    try:
        res = importlib.resources.files("parecer") / "db"
        for part in parts:
            res = res / part
        found = res.is_file() or res.is_dir()
    except (ImportError, OSError, TypeError, ValueError, AttributeError):
        return checkout  # not importable as a package (e.g. run from the checkout)
    return Path(str(res)) if found else checkout


@dataclass(frozen=True)
class SampleStats:
    """Size of the requested sample and what this call actually added."""

    clients: int
    contacts: int  # distinct contacts referenced by the sample's sessions
    sessions: int
    messages: int
    inserted_sessions: int
    inserted_messages: int
    seconds: float


# --------------------------------------------------------------------------- text

# A line of dialogue: (from_me, alternatives). Templates are stored already escaped
# for COPY text format; slot values never contain tabs, newlines or backslashes.
Line = tuple[bool, tuple[str, ...]]
Step = tuple[Line, ...]


def _esc(s: str) -> str:
    return s.replace("\\", "\\\\").replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")


def _alts(*alts: str) -> tuple[str, ...]:
    return tuple(_esc(a) for a in alts)


def A(*alts: str) -> Line:  # the agent (ATENDENTE, from_me = true)
    return (True, _alts(*alts))


def C(*alts: str) -> Line:  # the customer (CLIENTE, from_me = false)
    return (False, _alts(*alts))


@dataclass(frozen=True)
class _Scenario:
    name: str
    opening: tuple[str, ...]  # the customer's first description of the problem
    steps: tuple[Step, ...]  # steps[0] usually comes first, the rest in random order
    resolved: tuple[str, ...]
    escalated: tuple[str, ...]


@dataclass(frozen=True)
class _Family:
    name: str
    agents: tuple[tuple[str, str], ...]  # (name, article)
    scenarios: tuple[_Scenario, ...]
    weights: tuple[float, ...]  # cumulative scenario weights
    filler_steps: tuple[Step, ...]
    client_image: tuple[str, ...]
    client_doc: tuple[str, ...]
    agent_image: tuple[str, ...]
    agent_doc: tuple[str, ...]


def _cumulative(ws: Sequence[float]) -> tuple[float, ...]:
    total, acc, out = sum(ws), 0.0, []
    for w in ws:
        acc += w
        out.append(acc / total)
    return tuple(out)


_CLIENT_GREETINGS = _alts(
    "Oi", "Olá", "Oi, tudo bem?", "Olá, tudo bom?", "Oi, boa tarde", "Bom dia!", "Boa noite",
    "Olá, preciso de ajuda", "Oi!! Alguém pode me ajudar?", "Oie",
)
_AGENT_GREETINGS = _alts(
    "Olá, {nome}! Aqui é {art} {agente}, da {empresa}. Como posso ajudar?",
    "Oi, {nome}, tudo bem? Sou {art} {agente}, da equipe de atendimento da {empresa}. "
    "Em que posso ajudar?",
    "Olá! {Obg_at} por entrar em contato com a {empresa}. Meu nome é {agente}, "
    "como posso te ajudar hoje?",
    "Oi, {nome}! {agente} falando. Me conta, o que aconteceu?",
)
_CLIENT_THANKS = _alts(
    "{Obg}!", "Muito {obg}, {agente}!", "Resolveu, valeu!", "Perfeito, {obg} pela ajuda",
    "Ok, {obg}", "Show, muito {obg} 🙏", "Até que enfim! {Obg}.", "Beleza, {obg} pela atenção",
)
_AGENT_FAREWELL = _alts(
    "Por nada, {nome}! A {empresa} agradece o contato. Tenha um ótimo dia!",
    "Eu que agradeço! Se precisar, é só chamar por aqui.",
    "Imagina! Qualquer coisa, estamos à disposição.",
    "Disponha, {nome}! Vou encerrar o atendimento, mas pode nos chamar quando quiser.",
)
_CLIENT_ESCALATION_REACTION = _alts(
    "Tá bom, vou aguardar",
    "De novo esse prazo? Já é a terceira vez que eu entro em contato.",
    "Ok. Espero que resolvam dessa vez",
    "Tá, mas me avisem por favor",
    "Sério? Não dá pra resolver agora?",
    "Ok, anotei o protocolo",
)
_AGENT_AFTER_ESCALATION = _alts(
    "Mais alguma coisa em que eu possa ajudar, {nome}?",
    "Peço desculpas pelo transtorno. Assim que tivermos retorno, avisamos por aqui.",
    "Fique {tranquilo}, vamos acompanhar o seu caso. Até logo!",
)
_AGENT_PENDING_QUESTION = _alts(
    "Conseguiu verificar, {nome}?",
    "Pode me confirmar essa informação, por favor?",
    "Posso ajudar em mais alguma coisa?",
    "Ficou alguma dúvida?",
)
_AGENT_STILL_THERE = _alts(
    "{nome}, você ainda está aí?",
    "Oi, {nome}? Continua comigo?",
    "Olá, {nome}! Ainda posso ajudar?",
)
_AGENT_CLOSE_SILENT = _alts(
    "Como não tivemos retorno, vou encerrar este atendimento. Se precisar, é só chamar "
    "novamente!",
    "Este atendimento será encerrado por falta de interação. A {empresa} agradece!",
    "Vou finalizar a conversa por inatividade. Quando puder, é só mandar uma mensagem.",
)
_CLIENT_NO_REPLY = _alts(
    "Alguém aí?", "Olá??", "Oi, tem alguém atendendo?", "Preciso de ajuda, por favor",
    "Ninguém responde nesse chat...", "Vou tentar ligar então.", "???",
    "Estou aguardando há mais de uma hora", "Oi?",
)
_AGENT_FILLER = _alts(
    "Um momento, por favor.", "Só um instante, estou verificando.", "{Obg_at} por aguardar.",
    "Certo, {nome}.", "Entendi.", "Estou consultando o sistema, só mais um minutinho.",
)
_CLIENT_FILLER = _alts(
    "Ok", "Tá bom", "Certo", "Aguardo", "E aí?", "Alguma novidade?", "Blz", "Ainda estou aqui",
    "Demora muito?", "hmm",
)

_SHARED_FILLER_STEPS: tuple[Step, ...] = (
    (A("Um momento, por favor, estou verificando."), C("Ok", "Tá bom", "Aguardo")),
    (C("Conseguiu ver?", "E aí, conseguiu?"),
     A("Ainda estou verificando, {nome}. Só mais um instante.")),
    (A("{Obg_at} por aguardar."), C("Tudo bem", "Sem problemas")),
    (C("Vai demorar muito? Estou no trabalho"), A("Já estou finalizando, {nome}.")),
    (A("Pode me confirmar um telefone para contato?"),
     C("Pode ser esse mesmo", "({ddd}) 9{tel}")),
    (C("Desculpa a demora, estava dirigindo", "Desculpa, tive que sair rapidinho"),
     A("Sem problemas!", "Tudo bem, {nome}!")),
    (C("Alô?", "Oi??"), A("Estou aqui, {nome}. Só mais um momento.")),
    (A("O sistema está um pouco lento hoje, peço paciência."), C("Tá bom", "Ok, sem pressa")),
    (C("Já tentei resolver pelo aplicativo e não consegui"),
     A("Entendo. Vamos resolver por aqui mesmo.")),
    (C("Já entrei em contato várias vezes e ninguém resolve"),
     A("Sinto muito por isso, {nome}. Vou acompanhar o seu caso pessoalmente.")),
    (A("Só para confirmar: o atendimento é para você {mesmo}?"),
     C("Sim, sou eu", "É para a minha mãe, mas eu que cuido disso")),
    (C("Posso mandar um áudio?"), A("Pode sim, fique à vontade.")),
)

# -- internet / phone provider -----------------------------------------------------

_TELECOM_SCENARIOS = (
    _Scenario(
        "internet",
        _alts(
            "Minha internet caiu desde ontem à noite e até agora nada",
            "A internet tá muito lenta, contratei {plano} e no teste dá {velocidade}",
            "Estou sem internet em casa, a luz do modem está piscando vermelho",
            "A internet fica caindo toda hora, não consigo trabalhar",
            "Minha conexão cai toda noite, a partir das 20h fica impossível de usar",
        ),
        (
            (A("Sinto muito pelo transtorno, {nome}. Vou verificar a sua conexão. Pode me "
               "confirmar o CPF do titular?"), C("{cpf}", "É {cpf}")),
            (A("Poderia desligar o modem da tomada, aguardar 30 segundos e ligar de novo?"),
             C("Já fiz isso umas três vezes e não resolveu", "Ok, vou fazer",
               "Pronto, desliguei e liguei de novo")),
            (A("Quais luzes estão acesas no modem agora?"),
             C("A luz \"PON\" tá verde mas a \"LOS\" tá piscando vermelho",
               "Só a de energia", "Todas acesas, mas a internet não funciona")),
            (A("Identifiquei uma instabilidade na sua região. A equipe técnica já está atuando."),
             C("E tem previsão de volta?"),
             A("A previsão de normalização é de até {prazo}.")),
            (C("Aparece a mensagem 'sem acesso à internet' no celular"),
             A("Entendi. Vou fazer um teste remoto na sua linha, só um instante.")),
            (A("Fiz um reset remoto na sua porta. Pode testar de novo, por favor?"),
             C("Agora voltou, mas ainda tá lento", "Continua sem funcionar",
               "Voltou! Vou ver se continua")),
            (C("Eu trabalho de casa, preciso disso funcionando hoje!"),
             A("Entendo a urgência, {nome}. Vou priorizar o seu caso.")),
            (A("Você está conectado pelo Wi-Fi ou por cabo?"),
             C("Pelo Wi-Fi, o computador fica na sala", "No cabo, direto no modem")),
            (C("Fiz o teste de velocidade e deu isso:\nDownload: {velocidade}\nUpload: 2 Mega"),
             A("{Obg_at} pelas informações. Está bem abaixo do contratado.")),
        ),
        _alts(
            "Pronto, {nome}! Reconfigurei o seu modem remotamente e a conexão já está "
            "normalizada. Protocolo {protocolo}.",
            "A instabilidade foi corrigida e a sua velocidade já está de acordo com o "
            "{plano}. Seu protocolo é {protocolo}.",
        ),
        _alts(
            "Vou abrir uma ordem de serviço para visita técnica. Um técnico entrará em contato "
            "em até {prazo}. Protocolo {protocolo}.",
            "Como o problema persiste, encaminhei o seu caso para a equipe de rede. Protocolo "
            "{protocolo}, prazo de retorno de {prazo}.",
        ),
    ),
    _Scenario(
        "cobranca_indevida",
        _alts(
            "Veio uma cobrança de {valor} na minha fatura que eu não reconheço",
            "Minha conta desse mês veio {valor}, sempre pago {valor2}. O que aconteceu?",
            "Estão me cobrando um pacote de canais que eu nunca contratei",
            "Fui cobrado duas vezes no mesmo mês!",
        ),
        (
            (A("Vou verificar a sua fatura. Pode me confirmar o CPF do titular?"),
             C("{cpf}", "Claro: {cpf}")),
            (A("Na sua fatura consta o serviço \"{servico}\" no valor de {valor}. Você reconhece "
               "essa contratação?"), C("Não! Nunca pedi isso", "Nunca ouvi falar disso")),
            (C("Já é o segundo mês que isso acontece"),
             A("Peço desculpas pelo transtorno, {nome}.")),
            (A("Vou verificar o histórico de alterações do seu plano, um momento."),
             C("Ok, aguardo")),
            (C("Quero o meu dinheiro de volta"),
             A("Entendo. Vou verificar a possibilidade de estorno.")),
            (C("Está escrito assim na fatura:\n\"Serviço adicional - {valor}\"\nO que é isso?"),
             A("Esse é um serviço avulso. Vou checar quando ele foi ativado.")),
            (C("Eu já paguei a fatura, vou ter que pagar de novo?"),
             A("Não, {nome}. Se a cobrança for indevida, o valor volta como crédito.")),
        ),
        _alts(
            "Pronto, cancelei o serviço e o valor de {valor} será estornado na próxima fatura. "
            "Protocolo {protocolo}.",
            "Confirmei a cobrança em duplicidade e já gerei o crédito de {valor}. Protocolo "
            "{protocolo}.",
        ),
        _alts(
            "Abri uma contestação junto ao setor financeiro. O prazo de análise é de {prazo}. "
            "Protocolo {protocolo}.",
        ),
    ),
    _Scenario(
        "cancelamento",
        _alts(
            "Quero cancelar a minha internet",
            "Gostaria de cancelar meu plano, vou me mudar para uma cidade sem cobertura",
            "Como faço para cancelar o contrato?",
            "Quero cancelar tudo, internet e telefone",
        ),
        (
            (A("Que pena, {nome}! Posso saber o motivo do cancelamento?"),
             C("O serviço está muito instável", "Achei um plano mais barato na {operadora}",
               "Vou me mudar", "Está caro demais pra mim")),
            (A("Antes de seguir, tenho uma oferta: {plano_up} por {valor} nos próximos 6 meses. "
               "Tem interesse?"),
             C("Não, {obg}, quero cancelar mesmo", "Hmm, deixa eu pensar...")),
            (C("Tem multa?"),
             A("Como o seu contrato tem fidelidade até {data}, há uma multa proporcional de "
               "{valor}.")),
            (C("Mas ninguém me falou de multa quando contratei!"),
             A("Entendo, {nome}. Vou verificar as condições do seu contrato.")),
            (A("O equipamento precisa ser devolvido em uma de nossas lojas ou retirado por um "
               "técnico."), C("Prefiro que venham buscar", "Levo na loja do centro")),
        ),
        _alts(
            "Cancelamento realizado, {nome}. A retirada do equipamento está agendada para "
            "{data}. Protocolo {protocolo}.",
            "Pronto, o seu contrato será encerrado ao fim do ciclo atual. Protocolo {protocolo}.",
        ),
        _alts(
            "Vou transferir você para o setor de retenção, que cuida dos cancelamentos com "
            "multa. Protocolo {protocolo}.",
        ),
    ),
    _Scenario(
        "portabilidade",
        _alts(
            "Quero trazer meu número da {operadora} para a {empresa}",
            "Minha portabilidade está parada há uma semana",
            "Pedi a portabilidade do meu número e até agora nada",
        ),
        (
            (A("Pode me informar o número que será portado, com DDD?"), C("({ddd}) 9{tel}")),
            (A("A portabilidade leva até 3 dias úteis após a confirmação por SMS. Você recebeu o "
               "SMS de confirmação?"), C("Recebi e respondi SIM", "Não recebi nada")),
            (C("Fiquei sem linha nenhuma, nem o chip antigo funciona"),
             A("Vou verificar o status junto à {operadora}.")),
            (A("O pedido consta com status \"pendente de validação\"."), C("E o que eu faço?")),
            (C("Vou perder meu número?"),
             A("Não, {nome}. O número é seu e continua reservado durante o processo.")),
        ),
        _alts(
            "A portabilidade foi concluída! Seu número já está ativo na {empresa}. Reinicie o "
            "celular para atualizar. Protocolo {protocolo}.",
        ),
        _alts(
            "Abri um chamado com a {operadora} para liberar o número. O prazo é de {prazo}. "
            "Protocolo {protocolo}.",
        ),
    ),
    _Scenario(
        "segunda_via",
        _alts(
            "Preciso da segunda via do boleto",
            "Não recebi a fatura desse mês",
            "Meu boleto venceu, como eu pago?",
        ),
        (
            (A("Claro! Me confirma o CPF do titular, por favor?"), C("{cpf}")),
            (A("Encontrei a fatura com vencimento em {data}, no valor de {valor}."),
             C("Isso, essa mesmo", "Essa mesma, pode mandar")),
            (C("Dá pra pagar por Pix?"), A("Sim! Vou enviar o código Pix copia e cola.")),
            (C("Vai ter juros?"),
             A("Sim, há multa de 2% e juros de 1% ao mês, que virão na próxima fatura.")),
            (A("Prefere receber por aqui ou por e-mail?"), C("Por aqui mesmo", "Pelos dois")),
        ),
        _alts(
            "Segue o código de barras:\n{barcode}\nO pagamento é compensado em até 2 dias "
            "úteis. Protocolo {protocolo}.",
            "Enviei a segunda via para o seu e-mail e também por aqui. Protocolo {protocolo}.",
        ),
        _alts(
            "Não consegui gerar a segunda via pelo sistema. Encaminhei ao financeiro, que "
            "enviará o boleto por e-mail em até {prazo}. Protocolo {protocolo}.",
        ),
    ),
    _Scenario(
        "mudanca_endereco",
        _alts(
            "Vou me mudar e queria levar a internet para o endereço novo",
            "Preciso transferir o meu plano para outro endereço",
        ),
        (
            (A("Qual é o novo endereço, com CEP?"), C("{endereco}, CEP {cep}")),
            (A("Verifiquei a cobertura e o endereço é atendido pela nossa fibra."),
             C("Ótimo!", "Que bom")),
            (C("Tem custo a mudança?"),
             A("A taxa de transferência é de {valor}, que pode ser parcelada na fatura.")),
            (A("Qual a melhor data para a instalação no novo endereço?"),
             C("Pode ser dia {dia}, de manhã?", "Qualquer dia depois do dia {dia}")),
        ),
        _alts(
            "Mudança agendada para {data}, no período da manhã. O técnico levará o equipamento. "
            "Protocolo {protocolo}.",
        ),
        _alts(
            "Esse endereço precisa de viabilidade técnica. Encaminhei para a equipe de "
            "engenharia, retorno em até {prazo}. Protocolo {protocolo}.",
        ),
    ),
    _Scenario(
        "upgrade_plano",
        _alts(
            "Quero aumentar a velocidade da minha internet",
            "Tem plano mais rápido? O meu {plano} não está dando conta",
            "Vi a promoção do {plano_up}, consigo mudar?",
        ),
        (
            (A("Temos as seguintes opções:\n- {plano_up}: {valor}/mês\n- Fibra 1 Giga: "
               "{valor2}/mês\nQual prefere?"), C("O {plano_up}", "O primeiro")),
            (C("Muda a fidelidade?"), A("Sim, o upgrade renova a fidelidade por 12 meses.")),
            (C("E o modem atual aguenta?"),
             A("Vou verificar o modelo do seu equipamento, um momento.")),
            (C("Tem desconto pra quem já é cliente?"),
             A("Para clientes ativos, o primeiro mês sai pela metade do preço.")),
        ),
        _alts(
            "Upgrade feito! Em até 2 horas o seu plano passa a ser {plano_up}. O novo valor de "
            "{valor} vem na próxima fatura. Protocolo {protocolo}.",
        ),
        _alts(
            "Para esse plano será necessária a troca do modem. Encaminhei para agendamento "
            "técnico. Protocolo {protocolo}.",
        ),
    ),
)

_TELECOM = _Family(
    "telecom",
    (("Ana", "a"), ("Bruno", "o"), ("Carla", "a"), ("Diego", "o"), ("Fernanda", "a"),
     ("Gustavo", "o"), ("Juliana", "a"), ("Rafael", "o"), ("Patrícia", "a"), ("Thiago", "o")),
    _TELECOM_SCENARIOS,
    _cumulative((30, 15, 12, 8, 15, 8, 12)),
    _SHARED_FILLER_STEPS + (
        (A("Você já tentou acessar pelo aplicativo da {empresa}?"),
         C("Tentei, mas pede uma senha que eu não tenho")),
        (C("Esse mês eu paguei certinho, hein"), A("Sim, consta aqui que está tudo em dia.")),
    ),
    _alts("Segue o print", "Olha a foto do modem", "Print do erro", "Foto aqui"),
    _alts("comprovante.pdf", "Segue o comprovante de pagamento", "fatura.pdf"),
    _alts("Segue a imagem com o passo a passo", "Veja a posição correta dos cabos"),
    _alts("Segue a segunda via", "fatura.pdf", "Contrato atualizado"),
)

# -- health clinic ---------------------------------------------------------------------

_CLINIC_SCENARIOS = (
    _Scenario(
        "agendar_consulta",
        _alts(
            "Gostaria de agendar uma consulta de {especialidade}",
            "Vocês têm horário com {medico} essa semana?",
            "Quero marcar uma consulta para a minha filha",
            "Preciso de uma consulta de {especialidade}, é urgente",
        ),
        (
            (A("Claro! A consulta será pelo convênio ou particular?"),
             C("Pelo convênio, {convenio}", "Particular. Quanto custa?")),
            (A("Tenho os seguintes horários com {medico}:\n- {data} às {hora}\n- {data2} às "
               "{hora2}\nQual fica melhor?"), C("O primeiro", "O segundo, por favor")),
            (A("Pode me informar o nome completo e a data de nascimento do paciente?"),
             C("{nome_completo}, {nascimento}")),
            (C("Precisa de pedido médico?"),
             A("Para consulta não precisa, apenas a carteirinha e um documento com foto.")),
            (A("O valor da consulta particular é {valor}."),
             C("Aceita cartão?", "Parcela?"), A("Aceitamos cartão de crédito, débito e Pix.")),
        ),
        _alts(
            "Consulta agendada com {medico} em {data} às {hora}. Chegue com 15 minutos de "
            "antecedência. Protocolo {protocolo}.",
        ),
        _alts(
            "No momento não há agenda aberta com {medico}. Coloquei você na lista de espera e "
            "a equipe entrará em contato. Protocolo {protocolo}.",
        ),
    ),
    _Scenario(
        "remarcar",
        _alts(
            "Preciso remarcar minha consulta do dia {data}",
            "Não vou conseguir ir na consulta de amanhã, dá pra trocar?",
        ),
        (
            (A("Sem problemas. Qual o nome completo do paciente?"), C("{nome_completo}")),
            (A("Encontrei a consulta com {medico} em {data} às {hora}. Para quando gostaria de "
               "remarcar?"), C("Para a semana que vem, de preferência à tarde")),
            (A("Tenho {data2} às {hora2}. Pode ser?"),
             C("Pode sim", "Esse não dá, tem outro?")),
            (C("Vai ter alguma taxa?"),
             A("Não, remarcações com mais de 24h de antecedência não têm custo.")),
        ),
        _alts("Pronto! Sua consulta foi remarcada para {data2} às {hora2}. Protocolo "
              "{protocolo}."),
        _alts(
            "A agenda de {medico} está fechada para o próximo mês. Encaminhei o pedido para a "
            "coordenação. Protocolo {protocolo}.",
        ),
    ),
    _Scenario(
        "resultado_exame",
        _alts(
            "Fiz um {exame} semana passada, o resultado já saiu?",
            "Como pego o resultado do meu exame?",
        ),
        (
            (A("Vou verificar. Pode me informar o nome completo e a data de nascimento?"),
             C("{nome_completo}, {nascimento}")),
            (A("O resultado do seu {exame} já está disponível no portal do paciente."),
             C("Não consigo acessar o portal, dá erro de senha")),
            (C("Aparece \"usuário não encontrado\" quando tento entrar"),
             A("Vou reenviar o link de acesso para o seu e-mail.")),
            (C("Pode mandar por aqui?"),
             A("Por segurança, enviamos apenas pelo portal ou para o e-mail cadastrado.")),
            (C("O resultado deu alterado, preciso voltar no médico?"),
             A("Recomendamos levar o resultado ao médico que pediu o exame. Posso agendar um "
               "retorno.")),
        ),
        _alts(
            "Reenviei o resultado para o e-mail cadastrado. Qualquer dúvida, estamos à "
            "disposição. Protocolo {protocolo}.",
        ),
        _alts(
            "O laudo ainda está em análise pelo médico responsável. O prazo é de {prazo}. "
            "Protocolo {protocolo}.",
        ),
    ),
    _Scenario(
        "convenio",
        _alts(
            "Vocês atendem {convenio}?",
            "Meu convênio mudou para {convenio}, preciso atualizar o cadastro",
        ),
        (
            (A("Atendemos sim! Qual é o seu plano?"), C("É o plano {plano_conv}")),
            (A("Pode enviar uma foto da carteirinha, frente e verso?"),
             C("Vou mandar", "Mandei agora")),
            (C("O {exame} é coberto?"),
             A("Depende da autorização do convênio. Vamos solicitar e o prazo é de até "
               "{prazo}.")),
            (C("Quanto fica a coparticipação?"),
             A("O valor da coparticipação é definido pelo convênio, em geral em torno de "
               "{valor}.")),
        ),
        _alts(
            "Cadastro atualizado com o convênio {convenio}. Já pode agendar normalmente. "
            "Protocolo {protocolo}.",
        ),
        _alts(
            "A guia precisa de autorização prévia. Enviei ao {convenio} e o retorno sai em até "
            "{prazo}. Protocolo {protocolo}.",
        ),
    ),
    _Scenario(
        "reclamacao_atendimento",
        _alts(
            "Quero fazer uma reclamação",
            "Fiquei mais de uma hora esperando ontem e ninguém me deu satisfação",
            "A recepcionista foi muito grosseira comigo",
        ),
        (
            (A("Lamentamos muito, {nome}. Pode me contar o que aconteceu?"),
             C("Cheguei às {hora} para a consulta e só fui {atendido} quase duas horas depois."
               "\nNinguém avisou do atraso.")),
            (C("Isso é um absurdo, pago caro no convênio"),
             A("Você tem toda razão em ficar {chateado}.")),
            (A("Em qual unidade foi o atendimento?"), C("Na unidade {unidade}")),
            (C("Falaram pra mim: 'o médico atende quando puder'"),
             A("Isso não é o padrão de atendimento que queremos oferecer.")),
        ),
        _alts(
            "Registrei a sua reclamação e a gerência da unidade vai tratar o caso. Agradecemos "
            "o retorno. Protocolo {protocolo}.",
        ),
        _alts(
            "Encaminhei sua reclamação para a ouvidoria, que responderá em até {prazo}. "
            "Protocolo {protocolo}.",
        ),
    ),
    _Scenario(
        "cancelar_consulta",
        _alts(
            "Quero cancelar minha consulta do dia {data}",
            "Preciso desmarcar o exame de amanhã",
        ),
        (
            (A("Claro. Qual o nome completo do paciente?"), C("{nome_completo}")),
            (A("Encontrei a consulta com {medico} em {data} às {hora}. Confirma o cancelamento?"),
             C("Confirmo", "Isso, pode cancelar")),
            (A("Gostaria de remarcar para outra data?"),
             C("Agora não, {obg}", "Depois eu vejo")),
        ),
        _alts("Consulta cancelada com sucesso. Protocolo {protocolo}."),
        _alts(
            "Como o cancelamento é com menos de 24h, preciso passar para a coordenação avaliar a "
            "taxa. Protocolo {protocolo}.",
        ),
    ),
)

_CLINIC = _Family(
    "clinic",
    (("Beatriz", "a"), ("Camila", "a"), ("Eduardo", "o"), ("Larissa", "a"), ("Marcos", "o"),
     ("Renata", "a"), ("Sônia", "a"), ("Vinícius", "o")),
    _CLINIC_SCENARIOS,
    _cumulative((35, 20, 15, 12, 8, 10)),
    _SHARED_FILLER_STEPS + (
        (A("O paciente é menor de idade?"), C("Não", "Sim, tem 9 anos")),
        (C("Tem estacionamento na clínica?"),
         A("Temos convênio com o estacionamento ao lado.")),
    ),
    _alts("Foto da carteirinha", "Segue o pedido médico", "Olha aí"),
    _alts("pedido_exame.pdf", "Segue o pedido do médico", "comprovante.pdf"),
    _alts("Mapa da unidade", "Segue a localização"),
    _alts("Orientações de preparo para o exame", "Comprovante de agendamento", "laudo.pdf"),
)

_FEMALE = (
    "Maria", "Ana", "Francisca", "Antônia", "Adriana", "Juliana", "Márcia", "Fernanda",
    "Patrícia", "Aline", "Sandra", "Camila", "Amanda", "Bruna", "Jéssica", "Letícia", "Júlia",
    "Luciana", "Vanessa", "Mariana", "Gabriela", "Débora", "Cláudia", "Tatiane", "Priscila",
    "Simone", "Larissa", "Beatriz", "Luíza", "Raquel",
)
_MALE = (
    "José", "João", "Antônio", "Francisco", "Carlos", "Paulo", "Pedro", "Lucas", "Luiz",
    "Marcos", "Luís", "Gabriel", "Rafael", "Daniel", "Marcelo", "Bruno", "Eduardo", "Felipe",
    "Rodrigo", "Manoel", "Mateus", "André", "Fernando", "Fábio", "Leonardo", "Gustavo",
    "Guilherme", "Leandro", "Tiago", "Sérgio",
)
_SURNAMES = (
    "Silva", "Santos", "Oliveira", "Souza", "Rodrigues", "Ferreira", "Alves", "Pereira", "Lima",
    "Gomes", "Costa", "Ribeiro", "Martins", "Carvalho", "Almeida", "Lopes", "Soares",
    "Fernandes", "Vieira", "Barbosa", "Rocha", "Dias", "Nascimento", "Andrade", "Moreira",
    "Nunes", "Marques", "Machado", "Mendes", "Freitas", "Cardoso", "Ramos", "Gonçalves",
    "Santana", "Teixeira", "Araújo", "Conceição", "Azevedo", "Correia", "D'Ávila",
)
_DDDS = ("11", "21", "31", "41", "51", "61", "71", "81", "85", "19", "27", "48", "62", "92")
_PLANS = (
    ("Fibra 100 Mega", "Fibra 300 Mega"), ("Fibra 300 Mega", "Fibra 500 Mega"),
    ("Fibra 500 Mega", "Fibra 700 Mega"), ("Fibra 200 Mega", "Fibra 600 Mega"),
)
_SPEEDS = ("0,8 Mega", "3 Mega", "5 Mega", "12 Mega", "20 Mega", "35 Mega")
_SERVICES = ("Pacote Esportes HD", "Seguro Residencial", "Antivírus Premium",
             "Linha Fixa Ilimitada", "Streaming Kids")
_CARRIERS = ("Vivo", "Claro", "TIM", "Oi")
_DEADLINES = ("24 horas", "48 horas", "72 horas", "5 dias úteis", "7 dias úteis",
              "10 dias úteis")
_STREETS = ("Rua das Palmeiras", "Avenida Brasil", "Rua Sete de Setembro", "Rua São João",
            "Avenida Getúlio Vargas", "Rua XV de Novembro", "Travessa da Paz",
            "Rua Padre Anchieta", "Alameda Santos", "Rua Barão do Rio Branco")
_DOCTORS = (
    ("Dra. Helena Prado", "cardiologia"), ("Dr. Ricardo Tavares", "ortopedia"),
    ("Dra. Luciana Mota", "dermatologia"), ("Dr. Paulo Henrique Sá", "clínica geral"),
    ("Dra. Cristina Farias", "ginecologia"), ("Dr. Otávio Brandão", "endocrinologia"),
    ("Dra. Renata Queiroz", "pediatria"), ("Dr. Júlio César Lins", "oftalmologia"),
)
_EXAMS = ("hemograma completo", "ultrassom abdominal", "raio-x do tórax", "eletrocardiograma",
          "exame de urina", "ressonância do joelho", "colesterol total e frações",
          "TSH e T4 livre")
_INSURERS = ("Unimed", "Bradesco Saúde", "SulAmérica", "Amil", "Porto Seguro Saúde",
             "NotreDame Intermédica", "Hapvida")
_INSURANCE_PLANS = ("Enfermaria", "Apartamento", "Básico", "Executivo", "Nacional Flex")
_UNITS = ("Centro", "Moema", "Savassi", "Boa Viagem", "Barra", "Asa Sul")


def _family_for(slug: str, position: int) -> _Family:
    s = slug.lower()
    if any(w in s for w in ("clinic", "saude", "saúde", "medic", "odonto", "hospital")):
        return _CLINIC
    if any(w in s for w in ("telecom", "fibra", "internet", "net")):
        return _TELECOM
    return (_TELECOM, _CLINIC)[position % 2]


# ------------------------------------------------------------------------ generation

Rnd = Callable[[], float]

_LENGTH_NO_AGENT = 0.02  # no agent reply at all (counted as short)
_LENGTH_SHORT = 0.30  # 3-15 messages
_LENGTH_MEDIUM = 0.90  # 20-40; the rest long, 40-90
_OPEN = 0.08  # still open: ended_at NULL
_RECENT = 0.18  # the next 10%: ended within the last 24 hours
_RESOLVED, _ESCALATED = 0.65, 0.85  # the rest: the customer went silent
_BACKFILL = 0.03  # closed sessions ingested late: created_at is the sync time
_EXTERNAL = 0.90  # messages with created_at_external
# One draw per message picks its kind: audio / image-or-document / edited text / plain.
_AUDIO_C, _AUDIO_A = 0.10, 0.04  # customer / agent: ~7% overall
_MEDIA_C, _MEDIA_A = 0.135, 0.065  # + image/document: ~3% overall
_EDITED = 0.89  # draws above this are edited (updated_at_external), when external


@dataclass(frozen=True)
class _Client:
    slug: str
    name: str
    family: _Family
    weight: int


@dataclass
class _Plan:
    """The cheap, leading part of a session's random draws (enough for the stats)."""

    client: _Client
    ordinal: int
    contact: int
    n: int
    no_agent: bool
    rng: random.Random


@dataclass
class _Batch:
    done: int  # sessions covered so far (the progress figure)
    sessions: int  # new sessions in this batch
    messages: int
    contacts_text: str  # COPY text: contacts (+ tags), tickets, sessions, messages
    tickets_text: str
    sessions_text: str
    messages_text: str


def _pick(rnd: Rnd, seq: Sequence[str]) -> str:
    return seq[int(rnd() * len(seq))]


def _assign(i: int, clients: Sequence[_Client], total_weight: int) -> tuple[_Client, int]:
    """Global index -> (client, ordinal within that client): a fixed repeating pattern,
    so ordinals stay the same when ``sessions`` grows."""
    cycle, pos = divmod(i, total_weight)
    for c in clients:
        if pos < c.weight:
            return c, cycle * c.weight + pos
        pos -= c.weight
    raise AssertionError("unreachable")


def _plan(seed: int, client: _Client, ordinal: int) -> _Plan:
    rng = random.Random(f"{seed}:{client.slug}:{ordinal}")
    rnd = rng.random
    # Returning contacts: the newest contact (the "frontier") or any earlier one, so a
    # client has about one contact per 2.5-3 sessions and older contacts have more.
    frontier = int(ordinal / 2.5)
    contact = frontier if rnd() < 0.45 else int(rnd() * (frontier + 1))
    u = rnd()
    if u < _LENGTH_NO_AGENT:
        n = 3 + int(rnd() * 6)
    elif u < _LENGTH_SHORT:
        n = 3 + int(rnd() * 13)
    elif u < _LENGTH_MEDIUM:
        n = int(rng.triangular(20, 41, 22))
    else:
        n = int(rng.triangular(40, 91, 45))
    return _Plan(client, ordinal, contact, n, u < _LENGTH_NO_AGENT, rng)


@functools.cache
def _hms_table() -> tuple[str, ...]:
    return tuple(f"{h:02d}:{m:02d}:{s:02d}+00" for h in range(24) for m in range(60)
                 for s in range(60))


class _Clock:
    """Epoch seconds -> timestamptz text, from cached day and time-of-day strings."""

    def __init__(self) -> None:
        self.hms = _hms_table()
        self.days: dict[int, str] = {}

    def day(self, day: int) -> str:
        prefix = self.days.get(day)
        if prefix is None:
            prefix = self.days[day] = datetime.fromtimestamp(
                day * _DAY, timezone.utc).strftime("%Y-%m-%d ")
        return prefix

    def __call__(self, ts: int) -> str:
        day, sec = divmod(ts, _DAY)
        return self.day(day) + self.hms[sec]


Identity = tuple[str, str, bool]  # first name, full name, female


def _contact_identity(seed: int, client: _Client, idx: int) -> tuple[Identity, random.Random]:
    """A contact's name (its first draws); the returned rng continues with the rest."""
    rng = random.Random(f"{seed}:{client.slug}:c{idx}")
    rnd = rng.random
    female = rnd() < 0.55
    first = _pick(rnd, _FEMALE if female else _MALE)
    name = f"{first} {_pick(rnd, _SURNAMES)}"
    if rnd() < 0.3:
        name += f" {_pick(rnd, _SURNAMES)}"
    return (first, name, female), rng


def _contact_row(seed: int, client: _Client, idx: int, now_ts: int, clock: _Clock) -> str:
    """COPY line for _sample_contacts: id, client_id, name, phone, created_at, tags."""
    (_, name, _), rng = _contact_identity(seed, client, idx)
    rnd = rng.random
    phone = f"55{_pick(rnd, _DDDS)}9{int(rnd() * 1e8):08d}"
    created = clock(now_ts - _WINDOW - _DAY - int(rnd() * 365 * _DAY))
    # Tagged iff a golden-ratio (Weyl) sequence over the index falls below 35%: any range
    # of contacts gets close to 35% tagged, even in a small sample.
    weyl = (idx * 0.6180339887498949 + random.Random(f"{seed}:{client.slug}:tags").random()) % 1
    tags = ",".join(rng.sample(TAG_VOCABULARY, 1 if rnd() < 0.6 else 2)) if weyl < 0.35 else ""
    stored_name = "\\N" if rnd() < 0.04 else name  # a few contacts were saved without a name
    return (f"{client.slug}:c{idx:05d}\t{client.slug}\t{stored_name}\t{phone}\t{created}\t"
            f"{tags}\n")


# Slot values are drawn lazily, when a template first needs them: a session only pays
# for the handful it uses. Makers may fill a paired slot too (plan and its upgrade...).
SlotMaker = Callable[[Rnd, dict[str, str]], str]


def _money(r: Rnd, _: dict[str, str]) -> str:
    return f"R$ {39 + int(r() * 361)},{(90, 99, 0, 50, 80)[int(r() * 5)]:02d}"


def _date(r: Rnd, _: dict[str, str]) -> str:
    return f"{1 + int(r() * 28):02d}/{1 + int(r() * 12):02d}"


def _dates(r: Rnd, slots: dict[str, str]) -> str:
    """"data" and "data2": two dates of the same month, 1-6 days apart."""
    day, month = 1 + int(r() * 22), 1 + int(r() * 12)
    slots["data"] = f"{day:02d}/{month:02d}"
    slots["data2"] = f"{day + 1 + int(r() * 6):02d}/{month:02d}"
    return slots["data"]  # __missing__ then returns whichever of the two was asked


def _hour(r: Rnd, _: dict[str, str]) -> str:
    h, m = 7 + int(r() * 12), (0, 15, 30, 45)[int(r() * 4)]
    return f"{h}h{m:02d}" if m else f"{h}h"


def _digits(r: Rnd, k: int) -> str:
    return f"{int(r() * 10**k):0{k}d}"


def _pair(pairs: Sequence[tuple[str, str]], first: str, second: str, want_second: bool
          ) -> SlotMaker:
    def make(r: Rnd, slots: dict[str, str]) -> str:
        a, b = pairs[int(r() * len(pairs))]
        slots[first], slots[second] = a, b
        return b if want_second else a
    return make


def _choice(pool: Sequence[str]) -> SlotMaker:
    return lambda r, _: pool[int(r() * len(pool))]


def _barcode(r: Rnd, _: dict[str, str]) -> str:
    d = "".join(_digits(r, 12) for _ in range(4))
    return (f"{d[0:5]}.{d[5:10]} {d[10:15]}.{d[15:21]} {d[21:26]}.{d[26:32]} {d[32]} "
            f"{d[33:47]}")


_SLOT_MAKERS: dict[str, SlotMaker] = {
    "protocolo": lambda r, _: str(10**11 + int(r() * 9 * 10**11)),
    "cpf": lambda r, _: f"{_digits(r, 3)}.{_digits(r, 3)}.{_digits(r, 3)}-{_digits(r, 2)}",
    "valor": _money, "valor2": _money, "data": _dates, "data2": _dates,
    "hora": _hour, "hora2": _hour,
    "dia": lambda r, _: str(1 + int(r() * 28)),
    "nascimento": lambda r, s: f"{_date(r, s)}/{1950 + int(r() * 62)}",
    "prazo": _choice(_DEADLINES), "ddd": _choice(_DDDS),
    "tel": lambda r, _: f"{_digits(r, 4)}-{_digits(r, 4)}",
    "plano": _pair(_PLANS, "plano", "plano_up", False),
    "plano_up": _pair(_PLANS, "plano", "plano_up", True),
    "velocidade": _choice(_SPEEDS), "servico": _choice(_SERVICES),
    "operadora": _choice(_CARRIERS),
    "endereco": lambda r, _: f"{_pick(r, _STREETS)}, {10 + int(r() * 2990)}",
    "cep": lambda r, _: f"{_digits(r, 5)}-{_digits(r, 3)}",
    "barcode": _barcode,
    "medico": _pair(_DOCTORS, "medico", "especialidade", False),
    "especialidade": _pair(_DOCTORS, "medico", "especialidade", True),
    "exame": _choice(_EXAMS), "convenio": _choice(_INSURERS),
    "plano_conv": _choice(_INSURANCE_PLANS), "unidade": _choice(_UNITS),
}

_GENDERED = {
    True: {"obg": "obrigada", "Obg": "Obrigada", "chateado": "chateada",
           "tranquilo": "tranquila", "atendido": "atendida", "mesmo": "mesma"},
    False: {"obg": "obrigado", "Obg": "Obrigado", "chateado": "chateado",
            "tranquilo": "tranquilo", "atendido": "atendido", "mesmo": "mesmo"},
}


class _Slots(dict[str, str]):
    """Template slot values of one session (str.format_map calls __missing__)."""

    def __init__(self, rnd: Rnd, base: dict[str, str]) -> None:
        super().__init__(base)
        self.rnd = rnd

    def __missing__(self, key: str) -> str:
        value = _SLOT_MAKERS[key](self.rnd, self)
        return self.setdefault(key, value)  # a pair maker may have set key already


def _shuffled(rnd: Rnd, seq: Sequence[Step]) -> list[Step]:
    out = list(seq)
    for i in range(len(out) - 1, 0, -1):
        j = int(rnd() * (i + 1))
        out[i], out[j] = out[j], out[i]
    return out


def _script(rnd: Rnd, fam: _Family, n: int, no_agent: bool, is_open: bool
            ) -> tuple[list[tuple[bool, str]], str]:
    """The session's dialogue as (from_me, escaped template) lines, and the ticket status."""
    u = rnd()
    scenario = fam.scenarios[-1]
    for sc, w in zip(fam.scenarios, fam.weights):
        if u < w:
            scenario = sc
            break
    opening = _pick(rnd, scenario.opening)
    if no_agent:
        lines = [(False, _pick(rnd, _CLIENT_GREETINGS)), (False, opening)]
        lines += [(False, _pick(rnd, _CLIENT_NO_REPLY)) for _ in range(n - 2)]
        return lines, "open" if is_open else "closed"

    long_form = n >= 8
    if long_form:
        head = [(False, _pick(rnd, _CLIENT_GREETINGS)), (True, _pick(rnd, _AGENT_GREETINGS)),
                (False, opening)]
    else:  # short sessions: greeting and problem in one message
        head = [(False, f"{_pick(rnd, _CLIENT_GREETINGS)}! {opening}")]

    closing: list[tuple[bool, str]] = []
    v = rnd()
    if is_open:
        status = "open"  # still going: no closing lines yet
    elif v < _RESOLVED:
        status = "resolved"
        closing = [(True, _pick(rnd, scenario.resolved)), (False, _pick(rnd, _CLIENT_THANKS))]
        if long_form:
            closing.append((True, _pick(rnd, _AGENT_FAREWELL)))
    elif v < _ESCALATED:
        status = "escalated"
        closing = [(True, _pick(rnd, scenario.escalated)),
                   (False, _pick(rnd, _CLIENT_ESCALATION_REACTION))]
        if long_form:
            closing.append((True, _pick(rnd, _AGENT_AFTER_ESCALATION)))
    else:
        status = "closed"  # the customer went silent
        closing = [(True, _pick(rnd, _AGENT_STILL_THERE)), (True, _pick(rnd, _AGENT_CLOSE_SILENT))]
        if long_form:
            closing.insert(0, (True, _pick(rnd, _AGENT_PENDING_QUESTION)))

    # Middle: the scenario's steps (the first one first, the others shuffled), then
    # generic steps, each added whole while it fits; single filler lines pad the rest.
    room = n - len(head) - len(closing)
    middle: list[tuple[bool, str]] = []
    steps = [scenario.steps[0], *_shuffled(rnd, scenario.steps[1:])]
    rounds = 0
    while room >= 2 and rounds < 4:
        for step in steps:
            if len(step) <= room:
                for from_me, alts in step:
                    middle.append((from_me, alts[int(rnd() * len(alts))]))
                room -= len(step)
                if room < 2:
                    break
        steps, rounds = _shuffled(rnd, fam.filler_steps), rounds + 1
    last_me = middle[-1][0] if middle else head[-1][0]
    for _ in range(room):
        me = not last_me if rnd() < 0.85 else last_me
        middle.append((me, _pick(rnd, _AGENT_FILLER if me else _CLIENT_FILLER)))
        last_me = me
    return head + middle + closing, status


def _session_rows(p: _Plan, identity: Identity, now_ts: int, clock: _Clock,
                  msgs: list[str]) -> tuple[str, str]:
    """Append the session's message COPY lines to ``msgs``; return its tickets and
    sessions lines."""
    client, rnd = p.client, p.rng.random
    fam = client.family
    first, full, female = identity
    u = rnd()
    is_open = u < _OPEN
    agent, article = fam.agents[int(rnd() * len(fam.agents))]
    slots = _Slots(rnd, _GENDERED[female])
    slots.update(nome=first, nome_completo=full, agente=agent, art=article,
                 empresa=client.name, Obg_at="Obrigada" if article == "a" else "Obrigado")
    lines, status = _script(rnd, fam, p.n, p.no_agent, is_open)
    n = len(lines)

    # Timing: gaps of 10 s to 10 min (log-uniform), placed relative to now.
    gaps = [int(10 * 60 ** rnd()) for _ in range(n - 1)]
    gaps.append(60)  # room after the last message for an edit, before ended_at
    duration = sum(gaps) - 60
    tail = 60 + int(rnd() * 1741)  # last message -> ended_at: 1-30 min
    if is_open:
        ended = 0
        last = now_ts - 60 - int(rnd() * 3 * 3600)
    elif u < _RECENT:
        ended = now_ts - int(rnd() * (_DAY - 60))
        last = ended - tail
    else:
        earliest = now_ts - _WINDOW
        latest = now_ts - _DAY - 60 - tail - duration
        last = earliest + int(rnd() * (latest - earliest)) + duration
        ended = last + tail
    t = started = last - duration
    backfill = min(ended + 60 + int(rnd() * 7200), now_ts) if ended and rnd() < _BACKFILL else 0
    backfill_text = clock(backfill) if backfill else ""

    sid = f"{client.slug}:s{p.ordinal:06d}"
    prefix = f"{client.slug}:m{p.ordinal:06d}-"
    out = msgs.append
    nul = "\\N"
    # Timestamps as text: the session's first day inline, the rare rest via clock().
    hms = clock.hms
    day0 = started - started % _DAY
    day_text = clock.day(started // _DAY)
    day_end = _DAY - 4  # room for created_at's 1-3 s ingestion delay
    for j in range(n):
        from_me, tpl = lines[j]
        text = tpl.format_map(slots) if "{" in tpl else tpl
        body, transcription, media, upd = text, nul, "text", nul
        r = rnd()
        if from_me:
            flag, p_audio, p_media = "t", _AUDIO_A, _MEDIA_A
        else:
            flag, p_audio, p_media = "f", _AUDIO_C, _MEDIA_C
        if r < p_media:
            if r < p_audio:  # ~60% transcribed (body NULL), the rest has neither
                media, body = "audio", nul
                if r < p_audio * 0.6:
                    transcription = text
            else:  # image / document: a short caption or nothing
                if rnd() < 0.5:
                    media, pool = "image", fam.agent_image if from_me else fam.client_image
                else:
                    media, pool = "document", fam.agent_doc if from_me else fam.client_doc
                body = _pick(rnd, pool) if rnd() < 0.6 else nul
        gap = gaps[j]
        v = rnd()
        rel = t - day0
        if backfill or v < _EXTERNAL:
            ext = day_text + hms[rel] if rel < day_end else clock(t)
            if backfill_text:
                created = backfill_text
            elif v < 0.6:
                created = ext
            else:  # ingested 1-3 s later
                created = clock(t + 1 + int(v * 10) % 3)
            if r > _EDITED:  # edited: after the original, before the next message
                upd = clock(t + 1 + int((r - _EDITED) / (1 - _EDITED) * (gap - 2)))
        else:
            ext = nul
            created = day_text + hms[rel] if rel < day_end else clock(t)
        out(f"{prefix}{j:03d}\t{sid}\t{flag}\t{media}\t{body}\t{transcription}\t{created}\t"
            f"{ext}\t{upd}\n")
        t += gap
    tid = f"{client.slug}:t{p.ordinal:06d}"
    start_text = clock(started)
    ticket = (f"{tid}\t{client.slug}\t{client.slug}:c{p.contact:05d}\t{status}\t"
              f"{start_text}\n")
    session = f"{sid}\t{tid}\t{start_text}\t{clock(ended) if ended else nul}\n"
    return ticket, session


# --------------------------------------------------------------------------- loading

_CONTACTS_COLS = "id, client_id, name, phone, created_at"
_TICKETS_COLS = "id, client_id, contact_id, status, created_at"
_SESSIONS_COLS = "id, ticket_id, started_at, ended_at"
_MESSAGES_COLS = ("id, session_id, from_me, media_type, body, transcription, created_at, "
                  "created_at_external, updated_at_external")

_STAGE_CONTACTS = """
CREATE TEMP TABLE _sample_contacts (
    id text, client_id text, name text, phone text, created_at timestamptz, tags text
) ON COMMIT DROP
"""
_STAGE_REST = """
CREATE TEMP TABLE _sample_tickets (
    id text, client_id text, contact_id text, status text, created_at timestamptz
) ON COMMIT DROP;
CREATE TEMP TABLE _sample_sessions (
    id text, ticket_id text, started_at timestamptz, ended_at timestamptz
) ON COMMIT DROP;
CREATE TEMP TABLE _sample_messages (
    id text, session_id text, from_me boolean, media_type text, body text,
    transcription text, created_at timestamptz, created_at_external timestamptz,
    updated_at_external timestamptz
) ON COMMIT DROP;
"""
_MOVE_TAGS = """
INSERT INTO chat.contact_tags (contact_id, tag)
SELECT id, unnest(string_to_array(tags, ',')) FROM _sample_contacts WHERE tags <> ''
ON CONFLICT DO NOTHING
"""


def _move(table: str, cols: str) -> str:
    return (f"INSERT INTO chat.{table} ({cols}) SELECT {cols} FROM _sample_{table} "
            "ON CONFLICT DO NOTHING")


def _commit(conn: psycopg.Connection) -> None:
    if not conn.autocommit:
        conn.commit()


def _ensure_schema(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT to_regclass('chat.messages') IS NOT NULL").fetchone()
    if row is None or not row[0]:
        conn.execute(sql_path("reference", "schema.sql").read_text(encoding="utf-8"))
    _commit(conn)


def _existing_sessions(conn: psycopg.Connection, slugs: list[str]) -> set[str]:
    rows = conn.execute(
        "SELECT s.id FROM chat.sessions s JOIN chat.tickets t ON t.id = s.ticket_id "
        "WHERE t.client_id = ANY(%s)", (slugs,)).fetchall()
    _commit(conn)
    return {r[0] for r in rows}


class _Generator:
    """Builds the batches; also tallies the sample's size (for every session, new or not)."""

    def __init__(self, seed: int, sessions: int, clients: list[_Client], now_ts: int,
                 existing: set[str]) -> None:
        self.seed, self.sessions, self.clients, self.now_ts = seed, sessions, clients, now_ts
        self.existing = existing
        self.total_weight = sum(c.weight for c in clients)
        self.contacts_seen: set[tuple[str, int]] = set()  # every contact of the sample
        self.messages = 0

    def batches(self) -> Iterator[_Batch]:
        seed, now_ts, clock = self.seed, self.now_ts, _Clock()
        staged: set[tuple[str, int]] = set()  # contacts already sent by this call
        identities: dict[tuple[str, int], Identity] = {}
        for b0 in range(0, self.sessions, BATCH_SESSIONS):
            b1 = min(b0 + BATCH_SESSIONS, self.sessions)
            contacts: list[str] = []
            tickets: list[str] = []
            sessions: list[str] = []
            msgs: list[str] = []
            for i in range(b0, b1):
                client, ordinal = _assign(i, self.clients, self.total_weight)
                p = _plan(seed, client, ordinal)
                key = (client.slug, p.contact)
                self.contacts_seen.add(key)
                self.messages += p.n
                if f"{client.slug}:s{ordinal:06d}" in self.existing:
                    continue
                if key not in staged:
                    staged.add(key)
                    contacts.append(_contact_row(seed, client, p.contact, now_ts, clock))
                identity = identities.get(key)
                if identity is None:
                    identity = identities[key] = _contact_identity(seed, client, p.contact)[0]
                ticket, session = _session_rows(p, identity, now_ts, clock, msgs)
                tickets.append(ticket)
                sessions.append(session)
            if len(identities) > 200_000:
                identities.clear()
            yield _Batch(b1, len(sessions), len(msgs), "".join(contacts), "".join(tickets),
                         "".join(sessions), "".join(msgs))


def _copy(cur: psycopg.Cursor[object], target: str, cols: str, data: str) -> None:
    if data:
        with cur.copy(f"COPY {target} ({cols}) FROM STDIN") as copy:
            copy.write(data)


def _load_batch(conn: psycopg.Connection, batch: _Batch) -> tuple[int, int]:
    """One transaction: contacts and tags through staging + ON CONFLICT DO NOTHING; then
    tickets, sessions and messages (all new when the batch was planned) COPYed straight
    into place under a savepoint, falling back to staging + ON CONFLICT DO NOTHING if any
    row turns out to exist already (e.g. a concurrent load)."""
    if not batch.sessions:
        return 0, 0
    with conn.transaction(), conn.cursor() as cur:
        cur.execute("SET LOCAL synchronous_commit = off")  # sample data: no fsync wait
        cur.execute(_STAGE_CONTACTS)
        _copy(cur, "_sample_contacts", f"{_CONTACTS_COLS}, tags", batch.contacts_text)
        cur.execute(_move("contacts", _CONTACTS_COLS))
        cur.execute(_MOVE_TAGS)
        try:
            with conn.transaction():
                _copy(cur, "chat.tickets", _TICKETS_COLS, batch.tickets_text)
                _copy(cur, "chat.sessions", _SESSIONS_COLS, batch.sessions_text)
                _copy(cur, "chat.messages", _MESSAGES_COLS, batch.messages_text)
            inserted = batch.sessions, batch.messages
        except psycopg.errors.UniqueViolation:
            cur.execute(_STAGE_REST)
            _copy(cur, "_sample_tickets", _TICKETS_COLS, batch.tickets_text)
            _copy(cur, "_sample_sessions", _SESSIONS_COLS, batch.sessions_text)
            _copy(cur, "_sample_messages", _MESSAGES_COLS, batch.messages_text)
            cur.execute(_move("tickets", _TICKETS_COLS))
            cur.execute(_move("sessions", _SESSIONS_COLS))
            sessions = cur.rowcount
            cur.execute(_move("messages", _MESSAGES_COLS))
            inserted = sessions, cur.rowcount
    _commit(conn)
    return inserted


def load_sample(
    conn: psycopg.Connection[Any],
    *,
    sessions: int = 300,
    seed: int = 42,
    clients: Sequence[tuple[str, str]] = DEFAULT_CLIENTS,
    now: datetime | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> SampleStats:
    """Load ``sessions`` deterministic support chats for ``clients`` (slug, display name).

    Creates the ``chat`` schema if it is missing, commits once per batch and is
    idempotent: sessions already present are skipped (not regenerated) and anything
    that may exist is inserted with ``ON CONFLICT DO NOTHING``. ``now`` (default: this
    hour, UTC; a naive value is taken as UTC) anchors the timestamps; the text never
    depends on it. ``progress(done, total)`` is called after each batch (sessions).
    """
    t0 = time.perf_counter()
    if sessions < 0:
        raise ValueError("sessions must be >= 0")
    if not clients:
        raise ValueError("at least one client is required")
    if now is None:
        now = datetime.now(timezone.utc).replace(minute=0, second=0, microsecond=0)
    elif now.tzinfo is None:
        now = now.replace(tzinfo=timezone.utc)
    now_ts = int(now.timestamp())
    specs = [_Client(slug, name, _family_for(slug, i), 3 if i == 0 else 2)
             for i, (slug, name) in enumerate(clients)]  # 60/40 for two clients

    # this module reads rows by position: work on tuples whatever the caller's row factory
    saved_factory = conn.row_factory
    conn.row_factory = tuple_row
    try:
        return _load(conn, sessions, seed, specs, now_ts, progress, t0)
    finally:
        conn.row_factory = saved_factory


def _load(conn: psycopg.Connection[Any], sessions: int, seed: int, specs: list[_Client], now_ts: int,
          progress: Callable[[int, int], None] | None, t0: float) -> SampleStats:
    _ensure_schema(conn)
    with conn.transaction(), conn.cursor() as cur:
        cur.executemany(
            "INSERT INTO chat.clients (id, slug, name) VALUES (%s, %s, %s) "
            "ON CONFLICT DO NOTHING", [(c.slug, c.slug, c.name) for c in specs])
    _commit(conn)
    existing = _existing_sessions(conn, [c.slug for c in specs]) if sessions else set()

    gen = _Generator(seed, sessions, specs, now_ts, existing)
    inserted_sessions = inserted_messages = 0
    with contextlib.closing(_prefetch(gen.batches())) as batches:
        for batch in batches:
            s, m = _load_batch(conn, batch)
            inserted_sessions += s
            inserted_messages += m
            if progress is not None:
                progress(batch.done, sessions)
    return SampleStats(
        clients=len(specs), contacts=len(gen.contacts_seen), sessions=sessions,
        messages=gen.messages, inserted_sessions=inserted_sessions,
        inserted_messages=inserted_messages, seconds=time.perf_counter() - t0)


def _prefetch(batches: Iterator[_Batch], depth: int = 1) -> Generator[_Batch, None, None]:
    """Run the generator in a thread so the next batch is built while the server works
    on the current one (psycopg releases the GIL while it waits)."""
    q: queue.Queue[_Batch | BaseException | None] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def put(item: _Batch | BaseException | None) -> bool:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False  # the consumer is gone

    def work() -> None:
        try:
            for b in batches:
                if not put(b):
                    return
            put(None)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, re-raised
            put(exc)

    th = threading.Thread(target=work, name="parecer-sample", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        th.join()
